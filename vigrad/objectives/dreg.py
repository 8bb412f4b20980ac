"""Doubly reparameterised gradients (Tucker, Lawson, Gu & Maddison, ICLR 2019).

For the IWELBO and the Rényi-alpha bound, naive path gradients (dropping the score of ``log q``) are
biased. DReG rewrites that score term by a second reparameterisation: with normalised weights
``v_k = w_k^(1-alpha) / sum_j w_j^(1-alpha)`` (``alpha = 0``: the IWELBO),

* guide parameters: ``sum_k [alpha v_k + (1 - alpha) v_k^2] grad_path log w_k`` where ``log w_k`` uses
  ``log q`` with stopped parameters (the :class:`~vigrad.PathGradient` log weight);
* model parameters: ``sum_k v_k grad_theta log w_k``.

Both are formed in one surrogate: the particles are scored twice with the same draws
(``p.rescore``), once as they are and once with the guide parameters stopped, so each parameter
group receives its own weights. Every sampled guide site must use :class:`~vigrad.PathGradient`
(the default here). With ``K = 1`` DReG reduces to sticking the landing.
"""

from __future__ import annotations

from typing import Any

import jax

from vigrad.estimators.assignment import EstimatorSpec
from vigrad.estimators.base import Estimator
from vigrad.estimators.path import PathGradient
from vigrad.objectives.base import Objective
from vigrad.objectives.context import ProgramContext
from vigrad.objectives.renyi import renyi_bound
from vigrad.objectives.transform import Estimate

stop = jax.lax.stop_gradient


def dreg_surrogate(log_w: jax.Array, model_side_log_w: jax.Array, alpha: float) -> jax.Array:
    """The doubly reparameterised surrogate of the Rényi-alpha bound (``alpha = 0``: IWELBO)."""
    v = jax.nn.softmax((1.0 - alpha) * stop(log_w))
    guide_weight = alpha * v + (1.0 - alpha) * v**2
    return (stop(guide_weight) * log_w).sum() + (stop(v - guide_weight) * model_side_log_w).sum()


class DReG(Objective):
    """IWELBO (``alpha = 0``) or Rényi-alpha bound with doubly reparameterised gradients."""

    def __init__(
        self, num_particles: int = 8, alpha: float = 0.0, estimators: EstimatorSpec = None
    ):
        if alpha == 1.0:
            raise ValueError(
                "DReG(alpha=1) is the ELBO: use vigrad.ELBO with vigrad.PathGradient()"
            )
        super().__init__(num_particles, estimators)
        self.alpha = float(alpha)

    def default_estimator(self, fn: Any) -> Estimator:
        return PathGradient()

    def program(self, p: ProgramContext) -> Estimate:
        particles = p.particles(self.num_particles)
        model_side = p.rescore(particles, stop="guide")
        surrogate = dreg_surrogate(particles.log_w, model_side.log_w, self.alpha)
        value = renyi_bound(particles.log_w, self.alpha)
        return Estimate(value, surrogate, doubly_reparameterised=True)
