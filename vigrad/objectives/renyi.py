"""The Rényi (variational Rényi) bound of Li & Turner 2016.

``L_alpha = 1/(1 - alpha) * log (1/K) sum_k w_k^(1 - alpha)``: ``alpha = 0`` is the IWELBO and
``alpha -> 1`` the ELBO. Score-function sites get leave-one-out baselines.
"""

from __future__ import annotations

import jax

from vigrad.estimators.assignment import EstimatorSpec
from vigrad.objectives.base import Objective
from vigrad.objectives.context import ProgramContext
from vigrad.objectives.program import log_mean_exp


def renyi_bound(log_w: jax.Array, alpha: float) -> jax.Array:
    return log_mean_exp((1.0 - alpha) * log_w) / (1.0 - alpha)


class RenyiELBO(Objective):
    """The Rényi-alpha bound with ``K`` particles."""

    def __init__(
        self,
        alpha: float = 0.5,
        num_particles: int = 8,
        estimators: EstimatorSpec = None,
        leave_one_out: bool = True,
    ):
        if alpha == 1.0:
            raise ValueError("RenyiELBO(alpha=1) is the ELBO: use vigrad.ELBO")
        super().__init__(num_particles, estimators, leave_one_out)
        self.alpha = float(alpha)

    def program(self, p: ProgramContext):
        return renyi_bound(p.particles(self.num_particles).log_w, self.alpha)
