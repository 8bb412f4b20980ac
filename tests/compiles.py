"""Counting XLA compilations, for the tests that a repeated call compiles nothing."""

import jax

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


def count_compilations(fn) -> int:
    """XLA compilations while ``fn()`` runs (every jit, eager op or pilot that compiles; JAX
    records one backend-compile event per compilation)."""
    events = []

    def listen(name, secs, **kwargs):
        if name == BACKEND_COMPILE:
            events.append(name)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        fn()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return len(events)
