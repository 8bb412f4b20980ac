"""Stochastic-gradient MCMC on NumPyro models: SGLD, pSGLD, SGHMC, SGLD-CV, DSGLD and FSGLD,
with step-size selection and a convergence check."""

from vigrad.sgmcmc.convergence import Convergence, ConvergenceWarning, check_convergence
from vigrad.sgmcmc.federated import (
    DSGLD,
    FSGLD,
    GaussianApprox,
    ShardLayout,
    conducive_gradient,
    shard_layout,
)
from vigrad.sgmcmc.kernels import (
    SGHMC,
    SGLD,
    SGLDCV,
    Kernel,
    PreconditionedSGLDCV,
    PSGLDState,
    SGHMCState,
    SGLDState,
    polynomial_decay,
    pSGLD,
)
from vigrad.sgmcmc.minibatch import Target
from vigrad.sgmcmc.results import DivergentChainError, SGMCMCResult
from vigrad.sgmcmc.sample import sample
from vigrad.sgmcmc.stein import imq_ksd
from vigrad.sgmcmc.step_size import StepSizeSelection, select_step_size

__all__ = [
    "Convergence",
    "ConvergenceWarning",
    "DSGLD",
    "DivergentChainError",
    "FSGLD",
    "GaussianApprox",
    "Kernel",
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
    "Target",
    "check_convergence",
    "conducive_gradient",
    "imq_ksd",
    "pSGLD",
    "polynomial_decay",
    "sample",
    "select_step_size",
    "shard_layout",
]
