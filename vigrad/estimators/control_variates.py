"""Control variates (baselines) for score-function sites.

Each control variate is an ``(init, update)`` pair with explicit state, in the shape of optax's
gradient transformations: ``init(signals) -> state`` and ``update(signals, state) -> (baselines,
state)``. ``signals`` has shape ``[K, *plates]``: one learning signal per particle and per element of
the site's plates. Subtracting ``baselines`` keeps the estimator unbiased as long as the baseline of
particle ``k`` does not depend on particle ``k``'s sample: past signals (moving average) and the other
particles (leave-one-out) qualify, the current particle's own signal does not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from vigrad.errors import EstimatorError


class ControlVariate(NamedTuple):
    """A baseline as a pair of pure functions over explicit state.

    ``spec`` names the construction (e.g. ``"MovingAverage(0.9)"``): control variates built the same
    way compare equal and print by it; without one they compare by identity.
    """

    init: Callable[[jax.Array], Any]
    update: Callable[[jax.Array, Any], tuple[jax.Array, Any]]
    needs_independent_particles: bool = False
    spec: str | None = None

    def __eq__(self, other: object) -> bool:
        if self.spec is not None and isinstance(other, ControlVariate):
            return self.spec == other.spec
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self.spec) if self.spec is not None else tuple.__hash__(self)

    def __repr__(self) -> str:
        return self.spec if self.spec is not None else f"ControlVariate({self.init!r})"


class EmptyState(NamedTuple):
    """State of a control variate that keeps none."""


def no_baseline() -> ControlVariate:
    """Plain REINFORCE: the baseline is zero."""
    return ControlVariate(
        init=lambda signals: EmptyState(),
        update=lambda signals, state: (jnp.zeros_like(signals), state),
        spec="no_baseline()",
    )


def LeaveOneOut() -> ControlVariate:  # noqa: N802 (constructor-style name, as in the public API)
    """Leave-one-out baseline: ``b_k = mean_{j != k} f_j`` over the ``K`` particles.

    Unbiased without state or tuning when particles are independent and each signal depends on its
    own particle only (the ELBO with ``K > 1`` particles, Kool et al. 2019 "Buy 4 REINFORCE samples").
    """

    def update(signals: jax.Array, state: EmptyState) -> tuple[jax.Array, EmptyState]:
        k = signals.shape[0]
        if k < 2:
            raise EstimatorError(
                "LeaveOneOut() needs at least 2 particles; set num_particles >= 2 on the objective "
                "or use vigrad.MovingAverage() as the control variate."
            )
        return (jnp.sum(signals, axis=0, keepdims=True) - signals) / (k - 1), state

    return ControlVariate(
        lambda signals: EmptyState(), update, needs_independent_particles=True, spec="LeaveOneOut()"
    )


class MovingAverageState(NamedTuple):
    """Exponential moving average of past signals, with the count for bias correction."""

    average: jax.Array
    count: jax.Array


def MovingAverage(decay: float = 0.9) -> ControlVariate:  # noqa: N802
    """Moving-average baseline ``b_t = decay * b_{t-1} + (1 - decay) * mean_k f_{t,k}``.

    The baseline used at step ``t`` is built from steps before ``t`` only (bias-corrected as in
    Adam), so it is independent of the current samples and the estimator stays unbiased.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"MovingAverage(decay={decay}): decay must be in [0, 1)")

    def init(signals: jax.Array) -> MovingAverageState:
        return MovingAverageState(
            jnp.zeros(signals.shape[1:], signals.dtype), jnp.zeros((), jnp.int32)
        )

    def update(
        signals: jax.Array, state: MovingAverageState
    ) -> tuple[jax.Array, MovingAverageState]:
        correction = 1.0 - decay ** state.count.astype(signals.dtype)
        baseline = jnp.where(state.count > 0, state.average / jnp.maximum(correction, 1e-12), 0.0)
        average = decay * state.average + (1.0 - decay) * jnp.mean(signals, axis=0)
        return jnp.broadcast_to(baseline, signals.shape), MovingAverageState(
            average, state.count + 1
        )

    return ControlVariate(init, update, spec=f"MovingAverage({decay!r})")


class LearnedState(NamedTuple):
    """Parameters of a learned baseline and its optimiser state."""

    params: Any
    opt_state: Any


def Learned(module: Any, context: Any = None, learning_rate: float = 1e-2) -> ControlVariate:  # noqa: N802
    """Learned baseline ``b_psi(context)`` (NVIL, Mnih & Gregor 2014).

    ``module`` is an equinox module (any callable pytree) mapping ``context`` to a baseline that
    broadcasts to the site's plates; its array leaves ``psi`` are trained with Adam on the squared
    error ``mean_k (f_k - b_psi)^2`` of the signals, one step per objective evaluation. The baseline
    used at a step comes from the parameters before that step's update, so it never sees the
    current samples and the estimator stays unbiased.

    Args:
        module: the baseline network, e.g. ``eqx.nn.MLP(in_size, "scalar", 16, 1, key=key)``.
        context: its input (e.g. the data or an amortised summary); ``None`` feeds a scalar 0.
        learning_rate: Adam step size for ``psi``.
    """
    import equinox as eqx
    import optax

    params, static = eqx.partition(module, eqx.is_inexact_array)
    optimizer = optax.adam(learning_rate)
    inputs = jnp.zeros(()) if context is None else context

    def predict(p: Any, shape: tuple[int, ...]) -> jax.Array:
        return jnp.broadcast_to(eqx.combine(p, static)(inputs), shape)

    def init(signals: jax.Array) -> LearnedState:
        return LearnedState(params, optimizer.init(params))

    def update(signals: jax.Array, state: LearnedState) -> tuple[jax.Array, LearnedState]:
        baseline = predict(state.params, signals.shape[1:])
        loss = lambda p: jnp.mean((signals - predict(p, signals.shape[1:])) ** 2)
        grads = jax.grad(loss)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        return jnp.broadcast_to(baseline, signals.shape), LearnedState(new_params, opt_state)

    return ControlVariate(init, update)
