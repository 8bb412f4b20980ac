"""Stochastic-gradient MCMC on NumPyro models: SGLD, pSGLD, SGHMC, SGLD-CV, DSGLD and FSGLD."""

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
    PSGLDState,
    SGHMCState,
    SGLDState,
    polynomial_decay,
    pSGLD,
)
from vigrad.sgmcmc.minibatch import Target
from vigrad.sgmcmc.results import DivergentChainError, SGMCMCResult
from vigrad.sgmcmc.sample import sample

__all__ = [
    "DSGLD",
    "DivergentChainError",
    "FSGLD",
    "GaussianApprox",
    "Kernel",
    "PSGLDState",
    "SGHMC",
    "SGHMCState",
    "SGLD",
    "SGLDCV",
    "SGLDState",
    "SGMCMCResult",
    "ShardLayout",
    "Target",
    "conducive_gradient",
    "pSGLD",
    "polynomial_decay",
    "sample",
    "shard_layout",
]
