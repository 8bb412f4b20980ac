"""Importance-weighted bounds: IWELBO (Burda, Grosse & Salakhutdinov 2016) and VIMCO.

``IWELBO_K = E[log (1/K) sum_k w_k]`` is a tighter bound than the ELBO and tends to ``log p(x)`` as
``K`` grows. Its score-function sites get the whole bound as learning signal: :class:`VIMCO` (Mnih &
Rezende 2016) subtracts the per-particle baseline ``L_{-k}``, the bound with ``w_k`` replaced by the
geometric mean of the other weights. Sticking-the-landing sites are refused in both (the bound is
not linear in ``log q``): use :class:`~vigrad.DReG`.
"""

from __future__ import annotations

from vigrad.estimators.assignment import EstimatorSpec
from vigrad.objectives.base import Objective
from vigrad.objectives.context import ProgramContext
from vigrad.objectives.program import log_mean_exp


class IWELBO(Objective):
    """The importance-weighted ELBO with plain REINFORCE signals for score-function sites."""

    def __init__(self, num_particles: int = 8, estimators: EstimatorSpec = None):
        super().__init__(num_particles, estimators, leave_one_out=False)

    def program(self, p: ProgramContext):
        return log_mean_exp(p.particles(self.num_particles).log_w)


class VIMCO(IWELBO):
    """The IWELBO with VIMCO's per-particle leave-one-out baselines for score-function sites."""

    def __init__(self, num_particles: int = 8, estimators: EstimatorSpec = None):
        Objective.__init__(self, num_particles, estimators, leave_one_out=True)
