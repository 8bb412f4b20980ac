"""The surrogate: one scalar whose value is the objective estimate and whose gradient is unbiased.

Every objective reduces its particles to an :class:`Estimate`: the estimate itself, a
differentiable ``path`` term carrying the pathwise gradient, and per score-function site a learning
signal. This module is the only place where score terms are formed:

    surrogate = path + sum_sites sum( log q(z) * stop(signal - baseline) )
    objective = stop(estimate) + surrogate - stop(surrogate)

so the value seen by the user is the objective estimate and ``grad`` of it is the gradient estimate.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from vigrad.errors import EstimatorError
from vigrad.estimators.control_variates import ControlVariate, LeaveOneOut, no_baseline
from vigrad.objectives.particles import Particles, Structure

stop = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class Estimate:
    """An objective's reduction of its particles.

    Attributes:
        value: the objective estimate (to be maximised), a scalar.
        path: a scalar whose gradient is the pathwise part of the gradient estimate.
        signals: site -> ``[K, *plates]`` learning signal of each score-function site.
        independent_signals: whether particle ``k``'s signal depends on particle ``k`` only (true
            for the ELBO); leave-one-out baselines are valid only then.
    """

    value: jax.Array
    path: jax.Array
    signals: dict[str, jax.Array]
    independent_signals: bool


def control_variate_for(
    site: str, structure: Structure, estimate: Estimate, k: int
) -> ControlVariate:
    """The site's control variate: its own, else leave-one-out when valid, else none."""
    cv = getattr(structure.estimators[site], "control_variate", None)
    if cv is None:
        return LeaveOneOut() if k > 1 and estimate.independent_signals else no_baseline()
    if not isinstance(cv, ControlVariate):
        raise EstimatorError(
            f"Site '{site}': Score(control_variate=...) expects a vigrad control variate such as "
            f"vigrad.LeaveOneOut() or vigrad.MovingAverage(0.9), got {cv!r}"
        )
    if cv.needs_independent_particles and not estimate.independent_signals:
        raise EstimatorError(
            f"Site '{site}': this control variate needs per-particle signals that depend on their "
            "own particle only, which this objective does not provide (its particles are combined "
            "non-linearly). Use the objective's own leave-one-out signals (e.g. vigrad.VIMCO) or "
            "vigrad.MovingAverage()."
        )
    return cv


def init_control_variate_states(
    estimate: Estimate, structure: Structure, num_particles: int
) -> dict[str, Any]:
    return {
        site: control_variate_for(site, structure, estimate, num_particles).init(
            estimate.signals[site]
        )
        for site in structure.score_sites
    }


def surrogate_objective(
    estimate: Estimate, particles: Particles, structure: Structure, states: dict[str, Any]
) -> tuple[jax.Array, dict[str, Any]]:
    """The surrogate objective (to maximise) and the updated control-variate states."""
    k = particles.log_w.shape[0]
    total = estimate.path
    new_states = {}
    for site in structure.score_sites:
        cv = control_variate_for(site, structure, estimate, k)
        signal = stop(estimate.signals[site])
        baseline, new_states[site] = cv.update(signal, states[site])
        total = total + jnp.sum(particles.score_log_q[site] * stop(signal - baseline))
    return stop(estimate.value) + total - stop(total), new_states
