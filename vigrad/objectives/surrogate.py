"""The surrogate: one scalar whose value is the objective estimate and whose gradient is unbiased.

The program transformation (:mod:`vigrad.objectives.transform`) reduces a program to an
:class:`~vigrad.objectives.transform.Evaluation`: the estimate itself, a differentiable ``path``
term carrying the pathwise gradient, and per score-function site a learning signal. This module is
the only place where score terms are formed:

    surrogate = path + sum_score_sites sum( log q(z) * stop(signal - baseline) )
                     + sum_measure_valued_sites sum_b q(b) * stop(signal(b))
    objective = stop(estimate) + surrogate - stop(surrogate)

so the value seen by the user is the objective estimate and ``grad`` of it is the gradient estimate.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vigrad.errors import EstimatorError
from vigrad.estimators.control_variates import ControlVariate, LeaveOneOut, no_baseline
from vigrad.objectives.transform import Evaluation

stop = jax.lax.stop_gradient


def control_variate_for(node_id: str, evaluation: Evaluation) -> ControlVariate:
    """The site's control variate: its own, else leave-one-out when valid, else none."""
    node = evaluation.nodes[node_id]
    independent = evaluation.independent[node_id]
    cv = getattr(node.estimator, "control_variate", None)
    if cv is None:
        return LeaveOneOut() if node.num > 1 and independent else no_baseline()
    if not isinstance(cv, ControlVariate):
        raise EstimatorError(
            f"Site '{node.site}': Score(control_variate=...) expects a vigrad control variate such "
            f"as vigrad.LeaveOneOut() or vigrad.MovingAverage(0.9), got {cv!r}"
        )
    if cv.needs_independent_particles and not independent:
        raise EstimatorError(
            f"Site '{node.site}': this control variate needs per-particle signals that depend on "
            "their own particle only, which this objective does not provide (its particles are "
            "combined non-linearly). Use the objective's own leave-one-out signals (e.g. "
            "vigrad.VIMCO) or vigrad.MovingAverage()."
        )
    return cv


def init_control_variate_states(evaluation: Evaluation) -> dict[str, Any]:
    return {
        nid: control_variate_for(nid, evaluation).init(evaluation.signals[nid])
        for nid, node in evaluation.nodes.items()
        if not node.measure_valued
    }


def surrogate_objective(
    evaluation: Evaluation, states: dict[str, Any]
) -> tuple[jax.Array, dict[str, Any]]:
    """The surrogate objective (to maximise) and the updated control-variate states."""
    total = evaluation.path
    new_states = {}
    for nid, node in evaluation.nodes.items():
        if node.measure_valued:
            # The weak derivative sum_b grad q(b) f(b) needs no baseline.
            total = total + jnp.sum(evaluation.log_q[nid] * stop(evaluation.signals[nid]))
            continue
        cv = control_variate_for(nid, evaluation)
        signal = stop(evaluation.signals[nid])
        baseline, new_states[nid] = cv.update(signal, states[nid])
        total = total + jnp.sum(evaluation.log_q[nid] * stop(signal - baseline))
    return stop(evaluation.value) + total - stop(total), new_states
