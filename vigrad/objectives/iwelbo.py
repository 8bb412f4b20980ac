"""Importance-weighted bounds: IWELBO (Burda, Grosse & Salakhutdinov 2016) and VIMCO.

``IWELBO_K = E[log (1/K) sum_k w_k]`` is a tighter bound than the ELBO and tends to ``log p(x)`` as
``K`` grows. Its score-function sites need a per-particle baseline: :class:`VIMCO` (Mnih & Rezende
2016) uses ``L - L_{-k}`` with ``L_{-k}`` the bound with ``w_k`` replaced by the geometric mean of the
other weights, computed in log space. Both are :class:`~vigrad.objectives.program.Program`
objectives over ``log_mean_exp``. Naive path gradients (``PathGradient`` sites) inside the IWELBO are
biased: use :class:`~vigrad.DReG`.
"""

from __future__ import annotations

from vigrad.estimators.assignment import EstimatorSpec
from vigrad.objectives.program import Program, log_mean_exp


class IWELBO(Program):
    """The importance-weighted ELBO with plain REINFORCE signals for score-function sites."""

    def __init__(self, num_particles: int = 8, estimators: EstimatorSpec = None):
        super().__init__(log_mean_exp, num_particles, estimators, leave_one_out=False)


class VIMCO(Program):
    """The IWELBO with VIMCO's per-particle leave-one-out baselines for score-function sites."""

    def __init__(self, num_particles: int = 8, estimators: EstimatorSpec = None):
        super().__init__(log_mean_exp, num_particles, estimators, leave_one_out=True)
