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

from vigrad.estimators.assignment import EstimatorSpec
from vigrad.estimators.base import Estimator
from vigrad.estimators.path import PathGradient
from vigrad.estimators.score import Score
from vigrad.objectives.base import Objective
from vigrad.objectives.context import ProgramContext
from vigrad.objectives.program import log_mean_exp
from vigrad.objectives.transform import Estimate

stop = jax.lax.stop_gradient


class RWS(Objective):
    """Reweighted wake-sleep wake phases as one objective (see the module docstring).

    Args:
        num_particles: ``K``.
        wake: ``"score"`` (any site; samples held fixed) or ``"dreg"`` (every sampled site with
            ``PathGradient``).
        estimators: per-site estimators for ``wake="dreg"``.
    """

    def __init__(
        self, num_particles: int = 8, wake: str = "score", estimators: EstimatorSpec = None
    ):
        if wake not in ("score", "dreg"):
            raise ValueError(f"RWS(wake={wake!r}): wake must be 'score' or 'dreg'")
        super().__init__(num_particles, estimators)
        self.wake = wake

    def default_estimator(self, fn: Any) -> Estimator:
        return PathGradient()

    @property
    def fixed_estimator(self) -> Estimator | None:
        """The estimator of every guide site whatever the assignment, or ``None``.

        ``wake="score"`` draws every site as :class:`~vigrad.Score` draws it (gradient stopped;
        the wake-phi term is the weighted ``log q`` itself, with no learning signal), so no
        per-site estimator applies; under ``wake="dreg"`` the assignment decides.
        """
        return Score() if self.wake == "score" else None

    @staticmethod
    def dreg_weights(w: jax.Array) -> jax.Array:
        """Weights of the doubly reparameterised wake-phi path terms: ``w~ - w~^2``."""
        return w - w**2

    def program(self, p: ProgramContext) -> Estimate:
        particles = p.particles(self.num_particles, fixed=self.wake == "score")
        w = jax.nn.softmax(stop(particles.log_w))
        wake_theta = (w * p.rescore(particles, stop="guide").log_p).sum()
        guide_side = p.rescore(particles, stop="model")
        if self.wake == "score":
            wake_phi = (w * guide_side.log_q).sum()
        else:
            wake_phi = (stop(self.dreg_weights(w)) * guide_side.log_w).sum()
        return Estimate(
            log_mean_exp(particles.log_w),
            wake_theta + wake_phi,
            doubly_reparameterised=self.wake == "dreg",
        )
