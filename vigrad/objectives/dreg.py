"""Doubly reparameterised gradients (Tucker, Lawson, Gu & Maddison, ICLR 2019).

For the IWELBO and the Rényi-alpha bound, naive path gradients (dropping the score of ``log q``) are
biased. DReG rewrites that score term by a second reparameterisation: with normalised weights
``v_k = w_k^(1-alpha) / sum_j w_j^(1-alpha)`` (``alpha = 0``: the IWELBO),

* guide parameters: ``sum_k [alpha v_k + (1 - alpha) v_k^2] grad_path log w_k`` where ``log w_k`` uses
  ``log q`` with stopped parameters (the :class:`~vigrad.PathGradient` log weight);
* model parameters: ``sum_k v_k grad_theta log w_k``.

Both are formed in one surrogate: the particles are scored twice with the same noise, once as they
are and once with the guide parameters stopped, so each parameter group receives its own weights.
Every sampled guide site must use :class:`~vigrad.PathGradient` (the default here). With ``K = 1``
DReG reduces to sticking the landing.
"""

from __future__ import annotations

from typing import Any

import jax

from vigrad.errors import EstimatorError
from vigrad.estimators.assignment import EstimatorSpec
from vigrad.estimators.base import Estimator
from vigrad.estimators.path import PathGradient
from vigrad.objectives.base import Objective
from vigrad.objectives.particles import draw_particles
from vigrad.objectives.renyi import renyi_bound
from vigrad.objectives.surrogate import Estimate

stop = jax.lax.stop_gradient


class DReG(Objective):
    """IWELBO (``alpha = 0``) or Rényi-alpha bound with doubly reparameterised gradients."""

    def __init__(
        self, num_particles: int = 8, alpha: float = 0.0, estimators: EstimatorSpec = None
    ):
        if alpha == 1.0:
            raise ValueError(
                "DReG(alpha=1) is the ELBO: use vigrad.ELBO with vigrad.PathGradient()"
            )
        super().__init__(num_particles=num_particles, estimators=estimators)
        self.alpha = float(alpha)

    def default_estimator(self, fn: Any) -> Estimator:
        return PathGradient()

    def _estimate(self, rng_key, params, model, guide, args, kwargs):
        particles, structure = draw_particles(
            rng_key, self.num_particles, params, model, guide, args, kwargs, self.assignment
        )
        for name, est in structure.estimators.items():
            if not isinstance(est, PathGradient):
                raise EstimatorError(
                    f"DReG needs vigrad.PathGradient() on every sampled guide site; site '{name}' "
                    f"uses {est!r}. Remove its estimator assignment, or use vigrad.VIMCO for "
                    "score-function sites."
                )
        guide_params = {n for n, s in structure.guide_trace.items() if s["type"] == "param"}
        frozen = {n: stop(v) if n in guide_params else v for n, v in params.items()}
        model_side, _ = draw_particles(
            rng_key, self.num_particles, frozen, model, guide, args, kwargs, self.assignment
        )
        log_w = particles.log_w
        v = jax.nn.softmax((1.0 - self.alpha) * stop(log_w))
        guide_weight = self.alpha * v + (1.0 - self.alpha) * v**2
        path = (stop(guide_weight) * log_w).sum() + (
            stop(v - guide_weight) * model_side.log_w
        ).sum()
        estimate = Estimate(renyi_bound(log_w, self.alpha), path, {}, False)
        return estimate, particles, structure
