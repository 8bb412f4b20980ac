"""What :func:`vigrad.sgmcmc.sample` returns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from vigrad.errors import VigradError
from vigrad.reprs import fields_repr
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
        kernel, model, args, kwargs, data_plate, num_data: what ran, kept for
            :meth:`to_inference_data` (the pointwise log-likelihood and the step sizes).
    """

    samples: dict[str, np.ndarray]
    state: Any
    aux: Any
    num_warmup: int
    num_steps: int
    thinning: int
    convergence: Convergence | None = None
    kernel: Any = None
    model: Callable | None = None
    args: tuple = ()
    kwargs: dict | None = None
    data_plate: str | None = None
    num_data: int | None = None

    def __repr__(self) -> str:
        """The kernel, the draws' shapes, the run's length and the convergence verdict."""
        converged = None if self.convergence is None else bool(self.convergence.ok)
        return fields_repr(
            self,
            {
                "kernel": self.kernel,
                "samples": self.samples,
                "num_warmup": self.num_warmup,
                "num_steps": self.num_steps,
                "thinning": self.thinning,
                "converged": converged,
            },
        )

    def to_inference_data(
        self,
        *,
        log_likelihood: bool = True,
        dims: dict[str, list[str]] | None = None,
        coords: dict[str, Any] | None = None,
    ):
        """The draws as :class:`arviz.InferenceData`, laid out as ``arviz.from_numpyro`` does.

        Groups: ``posterior`` (chain, draw, ...); ``sample_stats`` with ``step_size`` (the ε of
        each kept step) and ``diverging`` (all False: a chain that diverges stops the run with
        :class:`DivergentChainError`); ``log_likelihood``, the pointwise ``log p(y_i | θ)`` of every
        observed site on all the data, so ``az.loo``, ``az.waic`` and ``az.compare`` work; and
        ``observed_data``. Axes indexed by a plate take the plate's name (``dims``) and
        ``range(size)`` (``coords``); ``dims`` and ``coords`` given here override them. The
        convergence check is in the ``posterior`` attributes.

        Args:
            log_likelihood: compute the ``log_likelihood`` group (one model evaluation on all the
                data per draw).
            dims, coords: as for ``arviz.from_dict``.
        """
        import arviz as az
        import jax.numpy as jnp
        from numpyro.handlers import substitute

        from vigrad.diagnostics.dims import plate_dims
        from vigrad.diagnostics.log_likelihood import pointwise_log_likelihood

        posterior = {name: np.asarray(value) for name, value in self.samples.items()}
        num_chains, num_draws = next(iter(posterior.values())).shape[:2]
        attrs: dict[str, Any] = {
            "inference_library": "vigrad.sgmcmc",
            "num_warmup": self.num_warmup,
            "thinning": self.thinning,
        }
        if self.kernel is not None:
            attrs["kernel"] = self.kernel.name
        if self.convergence is not None:
            attrs.update(
                converged=int(self.convergence.ok),
                max_rhat=float(self.convergence.max_rhat),
                min_ess_bulk=float(self.convergence.min_ess_bulk),
                min_ess_tail=float(self.convergence.min_ess_tail),
                convergence_message=self.convergence.message,
            )
        groups: dict[str, Any] = {"posterior": posterior}
        if self.kernel is not None:
            steps = self.num_warmup + self.thinning * np.arange(1, num_draws + 1) - 1
            eps = np.asarray([float(self.kernel.step_size_at(jnp.asarray(t))) for t in steps])
            groups["sample_stats"] = {
                "step_size": np.broadcast_to(eps, (num_chains, num_draws)).copy(),
                "diverging": np.zeros((num_chains, num_draws), bool),
            }
        if self.model is None:
            return az.from_dict(**groups, dims=dims, coords=coords, attrs=attrs)
        model = self.model
        if self.data_plate is not None and self.num_data is not None:
            model = substitute(model, data={self.data_plate: jnp.arange(self.num_data)})
        kwargs = dict(self.kwargs or {})
        site_dims, site_coords = plate_dims(model, self.args, kwargs, dims=dims, coords=coords)
        if log_likelihood:
            groups["log_likelihood"] = pointwise_log_likelihood(model, posterior, self.args, kwargs)
        groups["observed_data"] = _observed(model, self.args, kwargs)
        return az.from_dict(**groups, dims=site_dims, coords=site_coords, attrs=attrs)


def _observed(model: Callable, args: tuple, kwargs: dict) -> dict[str, np.ndarray]:
    import warnings

    from vigrad.traces import trace_program

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        observed = trace_program(model, args, kwargs).observed
    return {n: np.asarray(s["value"]) for n, s in observed.items() if not n.startswith("_")}
