"""Reweighted wake-sleep, wake phases (Bornschein & Bengio 2015; Le et al. 2019).

With ``K`` particles and normalised weights ``w~_k = w_k / sum_j w_j``:

* wake-theta (model parameters): ``sum_k w~_k grad_theta log p(x, z_k)``, the IWELBO's own gradient;
* wake-phi (guide parameters), ascending ``E_p(z|x)[log q(z)]`` (the inclusive KL):
  ``sum_k w~_k grad_phi log q_phi(z_k)`` at fixed samples (``wake="score"``, any site), or its doubly
  reparameterised form ``sum_k (w~_k - w~_k^2) grad_path log w_k`` (``wake="dreg"``, Tucker et al.
  2019; every site reparameterisable), which has the same expectation and lower variance.

The reported value is the IWELBO estimate. Both wake-phi forms are self-normalised importance
sampling estimates: consistent as ``K`` grows, not unbiased for the inclusive-KL gradient at finite
``K``; each is unbiased for its own expectation, which is what the tests check.
"""

from __future__ import annotations

from typing import Any

import jax

from vigrad.errors import EstimatorError
from vigrad.estimators.assignment import Assignment, EstimatorSpec
from vigrad.estimators.base import Estimator
from vigrad.estimators.path import PathGradient
from vigrad.estimators.score import Score
from vigrad.objectives.base import Objective
from vigrad.objectives.particles import draw_particles
from vigrad.objectives.program import log_mean_exp
from vigrad.objectives.surrogate import Estimate

stop = jax.lax.stop_gradient


class _FixedSamples(Assignment):
    """Every site drawn with its gradient stopped, whatever the guide asks for: the wake-phi score
    form needs ``log q`` at fixed samples."""

    def resolve(self, site: dict) -> Estimator:
        return Score()


class RWS(Objective):
    """Reweighted wake-sleep wake phases as one objective (see the module docstring).

    Args:
        num_particles: ``K``.
        wake: ``"score"`` (any site) or ``"dreg"`` (every sampled site with ``PathGradient``).
        estimators: per-site estimators for ``wake="dreg"``.
    """

    def __init__(
        self, num_particles: int = 8, wake: str = "score", estimators: EstimatorSpec = None
    ):
        if wake not in ("score", "dreg"):
            raise ValueError(f"RWS(wake={wake!r}): wake must be 'score' or 'dreg'")
        super().__init__(num_particles=num_particles, estimators=estimators)
        self.wake = wake
        if wake == "score":
            self.assignment = _FixedSamples()

    def default_estimator(self, fn: Any) -> Estimator:
        return PathGradient()

    @staticmethod
    def dreg_weights(w: jax.Array) -> jax.Array:
        """Weights of the doubly reparameterised wake-phi path terms: ``w~ - w~^2``."""
        return w - w**2

    def _estimate(self, rng_key, params, model, guide, args, kwargs):
        draw = lambda p: draw_particles(
            rng_key, self.num_particles, p, model, guide, args, kwargs, self.assignment
        )
        particles, structure = draw(params)
        if self.wake == "dreg":
            for name, est in structure.estimators.items():
                if not isinstance(est, PathGradient):
                    raise EstimatorError(
                        f"RWS(wake='dreg') needs vigrad.PathGradient() on every sampled guide "
                        f"site; site '{name}' uses {est!r}. Use RWS(wake='score') for such sites."
                    )
        guide_params = {n for n, s in structure.guide_trace.items() if s["type"] == "param"}
        only = lambda keep: {
            n: v if (n in guide_params) == keep else stop(v) for n, v in params.items()
        }
        model_side, _ = draw(only(False))
        guide_side, _ = draw(only(True))
        w = jax.nn.softmax(stop(particles.log_w))
        path = (w * model_side.log_p).sum()
        if self.wake == "score":
            path = path + (w * guide_side.log_q).sum()
        else:
            path = path + (stop(self.dreg_weights(w)) * guide_side.log_w).sum()
        # Wake-phi's score form is already in ``path``; the sites drawn with stopped samples get no
        # further score term.
        no_signal = {site: jax.numpy.zeros_like(lq) for site, lq in particles.score_log_q.items()}
        estimate = Estimate(log_mean_exp(particles.log_w), path, no_signal, False)
        return estimate, particles, structure
