"""One chunked run driver for every iterative algorithm in vigrad (the fit loop, SG-MCMC).

A run iterates a pure step ``step(carry, t, consts, x) -> (carry, out)`` for ``t = start, ...,
stop - 1``. ``consts`` are arrays fixed for the run (data, keys); ``x`` is step ``t``'s slice of the
chunk's inputs: minibatches fed from the host (see :func:`run_chunks`), or computed on the device
for the whole chunk (:class:`Step`), or ``None``. Steps run on the device in compiled chunks;
between chunks the host shows progress, checks for divergence and writes a checkpoint.

The chunk's trip count ``n`` is a traced argument and its per-step outputs go into a buffer of
static size (the chunk size), so the first chunk, a short last one and the replay after a
divergence share one compilation. Compiled chunks are cached on a hashable *static configuration*
chosen by the caller (the model, objective, optimiser, kernel, static arguments): a second run with
the same configuration and the same array shapes compiles nothing.

A step that makes ``finite(carry, out)`` false anywhere is recorded (the first one only, with the
mask ``finite`` returned there) without masking the carry, which would cost a select per array per
step. The driver then replays the chunk from its start up to that step, which gives the exact last
finite state because step ``t`` depends only on the carry, ``t`` and the constants, never on how
the run is cut into chunks.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from collections.abc import Callable, Collection, Hashable
from typing import Any, NamedTuple

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from vigrad.infer.checkpoint import resume_checkpoint, save_checkpoint
from vigrad.infer.progress import ChunkProgress
from vigrad.infer.sharding import host_copy

CACHE_SIZE = 64
"""Compiled functions kept; the least recently used one is dropped past this."""


class Step(NamedTuple):
    """A run's pure step and its divergence test, as a builder returns them.

    Attributes:
        step: ``step(carry, t, consts, x) -> (carry, out)``; ``t`` is an ``int32`` scalar.
        finite: ``finite(carry, out) -> bool array`` after a step, false where it diverged (its
            shape is the caller's: a scalar, or one entry per chain); ``None`` checks nothing.
        inputs: ``inputs(consts, start, size, fed) -> xs``, the inputs of a chunk's ``size``
            steps from ``start`` (leading axis ``size``), computed on the device before its loop:
            work that is cheaper vectorised than once per step (deriving every step's keys in
            one call). ``fed`` is the chunk's feed or ``None``. ``None``: ``xs`` is the feed.
        kept: ``kept(out) -> the part of a step's output the run keeps``; ``None`` keeps all of
            it. A value that only ``finite`` reads (a check of the gradients) belongs outside the
            kept part: read by the check alone, it is computed once, whereas XLA recomputes a
            scalar's whole producer chain for each consumer, which on a tiny model made a step
            about 15% slower.
    """

    step: Callable
    finite: Callable | None = None
    inputs: Callable | None = None
    kept: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Checkpointing:
    """How a run's state goes into and comes out of a checkpoint (:mod:`vigrad.infer.checkpoint`).

    Attributes:
        path: the checkpoint file, written after every chunk by process 0.
        run: the run's description; resuming checks that it is unchanged.
        pack: ``pack(carry, consts, step) -> state``, the pytree written.
        unpack: ``unpack(state, consts) -> (carry, consts, step)``, its inverse; ``consts`` are
            this call's, for what the checkpoint does not hold (the data).
        to_history: the outputs so far (step axis first) as named arrays.
        from_history: the inverse of ``to_history``.
        resume: ``True``, ``False`` or ``"extend"``, as :func:`resume_checkpoint` takes it.
        extendable: entries of ``run`` that may differ with ``resume="extend"``.
    """

    path: str | os.PathLike
    run: dict
    pack: Callable
    unpack: Callable
    to_history: Callable
    from_history: Callable
    resume: bool | str = False
    extendable: Collection[str] = ("num_steps",)


@dataclasses.dataclass
class RunResult:
    """What :func:`run_chunks` returns.

    Attributes:
        carry: the state after the last finite step.
        consts: the constants (restored from the checkpoint when the run resumed).
        outputs: per-step outputs of the finite steps with the step axis first (every
            ``thinning``-th step, the last of each group), a resumed run's included; ``None`` if
            no step has an output yet.
        step: steps completed (the first non-finite one excluded).
        bad_step: the first step where ``finite`` was false, or ``None``.
        bad_mask: ``finite``'s value at that step, or ``None``.
    """

    carry: Any
    consts: Any
    outputs: Any
    step: int
    bad_step: int | None = None
    bad_mask: np.ndarray | None = None


_COMPILED: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()


def cached(config: Hashable, build: Callable[[], Any]) -> Any:
    """The compiled function for a static configuration, built with ``build()`` on a cache miss.

    The one compile-cache policy of vigrad's runs (chunks of ``fit`` and ``sgmcmc.sample``, the
    initialiser of ``fit``): ``config`` must determine the function completely (everything
    ``build`` closes over that is not an array passed at run time) and is compared by ``==``;
    include a name for the algorithm. The :data:`CACHE_SIZE` most recently used are kept.
    """
    try:
        hash(config)
    except TypeError as err:
        raise TypeError(
            f"the run's static configuration must be hashable to cache its compilation ({err}); "
            "pass arrays as arguments rather than closing over them"
        ) from None
    if config in _COMPILED:
        _COMPILED.move_to_end(config)
        return _COMPILED[config]
    if len(_COMPILED) >= CACHE_SIZE:
        _COMPILED.popitem(last=False)
    _COMPILED[config] = built = build()
    return built


def compiled_chunk(config: Hashable | None, build: Callable[[], Step]) -> Callable:
    """The jitted chunk for a static configuration (:func:`cached`), built with ``build()``.

    ``None`` builds a chunk that is not cached (for a step closing over something unhashable).
    """
    if config is None:
        return _jit_chunk(build())
    return cached(("chunk", config), lambda: _jit_chunk(build()))


def _jit_chunk(fns: Step) -> Callable:
    step, finite, inputs, kept = fns
    kept = kept or (lambda out: out)

    def chunk(carry, consts, feed, start, n, size, thinning):
        xs = feed if inputs is None else inputs(consts, start, size, feed)
        first_x = None if xs is None else jax.tree.map(lambda a: a[0], xs)
        # The step is traced once, here: its jaxpr gives the output buffers' shapes and is what
        # the loop body evaluates (tracing a model, guide and objective is a large part of a
        # first run).
        traced, shapes = jax.make_jaxpr(step, return_shape=True)(carry, start, consts, first_x)
        traced_step = jax.extend.core.jaxpr_as_fun(traced)

        def run_step(*step_args):
            flat = traced_step(*jax.tree.leaves(step_args))
            return jax.tree.unflatten(jax.tree.structure(shapes), flat)

        slots = -(-size // thinning)
        buffer = jax.tree.map(
            lambda o: jnp.zeros((slots, *o.shape), o.dtype), jax.eval_shape(kept, shapes[1])
        )
        # A scalar check is false at the first bad step by definition, so only a check with
        # one entry per chain carries its value at that step.
        mask_shape = () if finite is None else jax.eval_shape(finite, *shapes).shape
        carry_mask = mask_shape != ()

        def body(j, loop):
            carry, buffer, bad, mask = loop
            t = start + j
            x = None if xs is None else jax.tree.map(lambda a: a[j], xs)
            carry, out = run_step(carry, t, consts, x)
            # The slot j // thinning is overwritten until the last step of its group.
            buffer = jax.tree.map(
                lambda b, o: jax.lax.dynamic_update_index_in_dim(b, o, j // thinning, 0),
                buffer,
                kept(out),
            )
            if finite is not None:
                ok = finite(carry, out)
                first = (bad < 0) & ~jnp.all(ok)
                bad = jnp.where(first, t, bad)
                if carry_mask:
                    mask = jnp.where(first, ok, mask)
            return carry, buffer, bad, mask

        init = (carry, buffer, jnp.array(-1, jnp.int32), jnp.ones(mask_shape, bool))
        carry, buffer, bad, mask = jax.lax.fori_loop(0, n, body, init)
        return carry, buffer, bad, mask if carry_mask else bad < 0

    return jax.jit(chunk, static_argnums=(5, 6))


def _concat(parts: list) -> Any:
    if not parts:
        return None
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *parts)


def run_chunks(
    config: Hashable | None,
    build: Callable[[], Step],
    carry: Any,
    consts: Any,
    stop: int,
    chunk_size: int,
    *,
    start: int = 0,
    warmup: int = 0,
    thinning: int = 1,
    feed: Callable[[int, int], Any] | None = None,
    progress_bar: bool = True,
    desc: str = "vigrad",
    summary: Callable[[Any], dict[str, float]] | None = None,
    checkpointing: Checkpointing | None = None,
) -> RunResult:
    """Run steps ``start, ..., stop - 1`` in compiled chunks of ``chunk_size`` steps.

    Args:
        config, build: the step's static configuration and its builder (:func:`compiled_chunk`).
        carry: the state before step ``start`` (a pytree of arrays, sharded as the caller wants).
        consts: arrays fixed for the run, passed to every step.
        stop: the step to stop before.
        chunk_size: steps per compiled chunk; progress, divergence checks and checkpoints happen
            between chunks. With ``thinning``, a multiple of it.
        start: the first step (0, or where a resumed checkpoint left off).
        warmup: steps before this one keep no output; the chunk that reaches it ends there, so
            the thinning groups after it are counted from it.
        thinning: keep the output of every ``thinning``-th step (the last of each group, counted
            from ``start``, or from ``warmup`` after it); the others are never copied off the
            device.
        feed: ``feed(step, n) -> pytree`` of arrays with a leading axis of ``chunk_size``: the
            inputs of steps ``step, ..., step + n - 1`` in its first ``n`` rows (the rest padding),
            produced on the host and transferred once per chunk.
        progress_bar, desc: show a progress bar (updated after each chunk) with this label.
        summary: ``summary(outputs of a chunk) -> {name: value}`` shown on the progress bar.
        checkpointing: save after every chunk and resume as it says.

    Returns:
        A :class:`RunResult`. After a non-finite step the run stops with the state before it.
    """
    if chunk_size < 1 or chunk_size % thinning:
        raise ValueError(
            f"chunk_size={chunk_size} must be a positive multiple of thinning={thinning}"
        )
    parts = []
    if checkpointing is not None:
        c = checkpointing
        template = c.pack(carry, consts, start)
        saved = resume_checkpoint(c.path, c.resume, template, c.run, c.extendable)
        if saved is not None:
            carry, consts, start = c.unpack(saved.state, consts)
            if saved.history:
                parts.append(c.from_history(saved.history))
    run = compiled_chunk(config, build)

    def count(step: int) -> int:
        return min(chunk_size, (warmup if step < warmup else stop) - step)

    def fed(step: int) -> Any:
        return None if feed is None or step >= stop else feed(step, count(step))

    step, bad = start, -1
    x = fed(step)
    with ChunkProgress(stop, initial=start, desc=desc, enabled=progress_bar) as progress:
        while step < stop:
            n = count(step)
            first = jnp.asarray(step, jnp.int32)
            new_carry, buffer, bad, mask = run(
                carry, consts, x, first, jnp.asarray(n, jnp.int32), chunk_size, thinning
            )
            # The chunk runs asynchronously: the host gathers the next chunk's inputs meanwhile.
            next_x = fed(step + n)
            bad, mask = host_copy((bad, mask))
            bad = int(bad)
            if bad >= 0:
                if bad > step:
                    done = jnp.asarray(bad - step, jnp.int32)
                    carry = run(carry, consts, x, first, done, chunk_size, thinning)[0]
                if step >= warmup:
                    parts.append(_head(buffer, (bad - step) // thinning))
                break
            carry, x = new_carry, next_x
            kept = step >= warmup
            if kept:
                parts.append(_head(buffer, n // thinning))
            step += n
            progress.update(n, **(summary(parts[-1]) if summary is not None and kept else {}))
            if checkpointing is not None:
                _save(checkpointing, carry, consts, step, _concat(parts))
    if bad >= 0:
        return RunResult(carry, consts, _concat(parts), bad, bad, np.asarray(mask))
    return RunResult(carry, consts, _concat(parts), step)


def _head(buffer: Any, k: int) -> Any:
    """The first ``k`` slots of a chunk's output buffer, on the host."""
    return jax.tree.map(lambda b: np.asarray(b)[:k], host_copy(buffer))


def _save(c: Checkpointing, carry: Any, consts: Any, step: int, outputs: Any) -> None:
    """Write the checkpoint once, from process 0, with every process's shards gathered."""
    state = host_copy(c.pack(carry, consts, step))
    if jax.process_index() == 0:
        history = c.to_history(outputs) if outputs is not None else {}
        save_checkpoint(c.path, state, c.run, history=history)


def default_chunk_size(num_steps: int) -> int:
    """A twentieth of the run: progress is shown and checkpoints are written 20 times."""
    return max(1, math.ceil(num_steps / 20))
