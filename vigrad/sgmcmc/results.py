"""What :func:`vigrad.sgmcmc.sample` returns."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from vigrad.errors import VigradError
from vigrad.sgmcmc.convergence import Convergence


class DivergentChainError(VigradError, FloatingPointError):
    """A chain's position became NaN or infinite."""


class SGMCMCResult(NamedTuple):
    """Draws of a stochastic-gradient MCMC run.

    Attributes:
        samples: constrained draws per latent site, shape ``(num_chains, num_draws, *site_shape)``.
        state: the kernels' final states (unconstrained; leading chain axis), to continue a run.
        aux: what the kernel computed once before sampling (SGLD-CV centre, FSGLD approximations).
        num_warmup: steps discarded before the first kept draw.
        num_steps: steps taken in all (warm-up included).
        thinning: steps between kept draws.
        convergence: split R-hat and bulk/tail ESS of every scalar against ArviZ's thresholds;
            ``convergence.ok`` is False and ``convergence.message`` says why and what to change
            when the draws should not be used (see :func:`vigrad.sgmcmc.check_convergence`).
    """

    samples: dict[str, np.ndarray]
    state: Any
    aux: Any
    num_warmup: int
    num_steps: int
    thinning: int
    convergence: Convergence | None = None

    def to_inference_data(self):
        """The draws as :class:`arviz.InferenceData` (``posterior`` group: chain, draw, ...)."""
        import arviz as az

        return az.from_dict(
            posterior={name: np.asarray(value) for name, value in self.samples.items()},
            attrs={
                "inference_library": "vigrad.sgmcmc",
                "num_warmup": self.num_warmup,
                "thinning": self.thinning,
            },
        )
