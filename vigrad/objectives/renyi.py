"""The Rényi (variational Rényi) bound of Li & Turner 2016.

``L_alpha = 1/(1 - alpha) * log (1/K) sum_k w_k^(1 - alpha)``: ``alpha = 0`` is the IWELBO and
``alpha -> 1`` the ELBO. Written as a :class:`~vigrad.objectives.program.Program`.
"""

from __future__ import annotations

import functools

import jax

from vigrad.estimators.assignment import EstimatorSpec
from vigrad.objectives.program import Program, log_mean_exp


def renyi_bound(log_w: jax.Array, alpha: float) -> jax.Array:
    return log_mean_exp((1.0 - alpha) * log_w) / (1.0 - alpha)


class RenyiELBO(Program):
    """The Rényi-alpha bound with ``K`` particles; score sites use leave-one-out baselines."""

    def __init__(
        self,
        alpha: float = 0.5,
        num_particles: int = 8,
        estimators: EstimatorSpec = None,
        leave_one_out: bool = True,
    ):
        if alpha == 1.0:
            raise ValueError("RenyiELBO(alpha=1) is the ELBO: use vigrad.ELBO")
        self.alpha = float(alpha)
        fn = functools.partial(renyi_bound, alpha=self.alpha)
        super().__init__(fn, num_particles, estimators, leave_one_out=leave_one_out)
