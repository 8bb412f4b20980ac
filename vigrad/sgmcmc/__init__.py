"""Stochastic-gradient MCMC on NumPyro models: SGLD, pSGLD, SGHMC, SGLD-CV, DSGLD and FSGLD,
with step-size selection and a convergence check.

A kernel composes an update rule (``sgld``, ``psgld``, ``sghmc``, ``preconditioned_sgld``: pure
``init``/``step`` pairs), a gradient estimator (``Minibatch``, ``ControlVariates``,
``LaplaceMetric``, ``Shards``, ``Conducive``) and a step size; ``SGLD``, ``FSGLD``, ... are the
named compositions."""

from vigrad.sgmcmc import preconditioned_sgld, psgld, sghmc, sgld
from vigrad.sgmcmc.control_variates import ControlVariates
from vigrad.sgmcmc.convergence import Convergence, ConvergenceWarning, check_convergence
from vigrad.sgmcmc.federated import (
    Conducive,
    GaussianApprox,
    ShardLayout,
    Shards,
    conducive_gradient,
    shard_layout,
)
from vigrad.sgmcmc.kernel import Kernel, Update, polynomial_decay
from vigrad.sgmcmc.kernels import (
    DSGLD,
    FSGLD,
    SGHMC,
    SGLD,
    SGLDCV,
    PreconditionedSGLDCV,
    pSGLD,
)
from vigrad.sgmcmc.laplace_metric import LaplaceMetric
from vigrad.sgmcmc.minibatch import Minibatch, Target
from vigrad.sgmcmc.psgld import PSGLDState
from vigrad.sgmcmc.results import DivergentChainError, SGMCMCResult
from vigrad.sgmcmc.sample import sample
from vigrad.sgmcmc.sghmc import SGHMCState
from vigrad.sgmcmc.sgld import SGLDState
from vigrad.sgmcmc.stein import imq_ksd
from vigrad.sgmcmc.step_size import StepSizeSelection, select_step_size

__all__ = [
    "Conducive",
    "ControlVariates",
    "Convergence",
    "ConvergenceWarning",
    "DSGLD",
    "DivergentChainError",
    "FSGLD",
    "GaussianApprox",
    "Kernel",
    "LaplaceMetric",
    "Minibatch",
    "PSGLDState",
    "PreconditionedSGLDCV",
    "SGHMC",
    "SGHMCState",
    "SGLD",
    "SGLDCV",
    "SGLDState",
    "SGMCMCResult",
    "StepSizeSelection",
    "ShardLayout",
    "Shards",
    "Target",
    "Update",
    "check_convergence",
    "conducive_gradient",
    "imq_ksd",
    "pSGLD",
    "preconditioned_sgld",
    "psgld",
    "sghmc",
    "sgld",
    "polynomial_decay",
    "sample",
    "select_step_size",
    "shard_layout",
]
