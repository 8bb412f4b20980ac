"""ArviZ ``InferenceData`` from vigrad results.

A variational fit becomes:

* ``posterior``: ``num_samples`` independent joint draws from the guide at the fitted parameters,
  for every latent and deterministic site of the model, laid out as ``num_chains`` (default 4)
  pseudo-chains so that ArviZ's R-hat and ESS apply (independent draws give R-hat 1 and ESS about
  ``num_samples``) and nothing warns about a single chain;
* ``sample_stats``: ``log_weight``, the log importance weight ``log p(x, z) - log q(z)`` of each draw,
  and ``log_weight_<site>``, each site's local log weight;
* ``log_likelihood``: the pointwise ``log p(y_i | z)`` of every observed site, so ``az.loo``,
  ``az.waic`` and ``az.compare`` work;
* ``observed_data``: the model's observed sites;
* ``loss``: the loss trace of the fit (one value per step, dimension ``step``);
* attributes (on ``posterior`` and ``sample_stats``): ``psis_khat`` and its reading
  ``psis_khat_message``, per-site ``psis_khat_site_<site>``, the number of steps and, if the run
  diverged, the step where it did.

Axes indexed by a plate are named after it, with ``range(size)`` as coordinates, as
``arviz.from_numpyro`` does; ``dims`` and ``coords`` given by the user override them. Everything is
plain arrays and scalar attributes, so ``idata.to_netcdf(path)`` writes it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from numpyro.infer.autoguide import AutoLaplaceApproximation

from vigrad.diagnostics.dims import plate_dims
from vigrad.diagnostics.gradients import ensure_prototype
from vigrad.diagnostics.guides import is_point_mass, laplace_guide, unwrap
from vigrad.diagnostics.log_likelihood import pointwise_log_likelihood
from vigrad.diagnostics.psis import (
    POINT_MASS_MESSAGE,
    draw_with_weights,
    khat_message,
    psis_khat,
    site_khats,
)
from vigrad.infer.fit import FitResult


def to_inference_data(
    obj: Any,
    *,
    model: Callable | None = None,
    guide: Callable | None = None,
    args: tuple = (),
    kwargs: dict | None = None,
    num_samples: int = 1000,
    rng_key: jax.Array | None = None,
    num_chains: int = 4,
    log_likelihood: bool = True,
    dims: dict[str, list[str]] | None = None,
    coords: dict[str, Any] | None = None,
    objective: Any = None,
) -> Any:
    """Convert a vigrad result to :class:`arviz.InferenceData`.

    Args:
        obj: a :class:`vigrad.FitResult` (then ``model`` and ``guide`` are required), or any object
            with a ``to_inference_data()`` method (such as stochastic-gradient MCMC results), which
            is called.
        model, guide: the NumPyro programs the result was fitted with.
        args, kwargs: the arguments the fit passed to both (the data).
        num_samples: number of guide draws.
        rng_key: key for the draws (default ``jax.random.key(0)``).
        num_chains: pseudo-chains the independent draws are split into (must divide
            ``num_samples``).
        log_likelihood: compute the ``log_likelihood`` group (one model evaluation per draw).
        dims, coords: as for ``arviz.from_dict``; they override the names taken from the plates.
        objective: the objective the fit used; the k-hat advice is then for it and the guide.

    Returns:
        An ``arviz.InferenceData`` with the groups described in :mod:`vigrad.diagnostics.inference_data`.

    Example::

        result = vigrad.fit(model, guide, vigrad.ELBO(), optax.adam(1e-2), 2000, key, x)
        idata = vigrad.to_inference_data(result, model=model, guide=guide, args=(x,))
        print(idata.posterior.attrs["psis_khat"], idata.posterior.attrs["psis_khat_message"])
        idata.to_netcdf("fit.nc")
    """
    if not isinstance(obj, FitResult):
        method = getattr(obj, "to_inference_data", None)
        if callable(method):
            return method()
        raise TypeError(
            "to_inference_data() converts a vigrad.FitResult or an object with a "
            f"to_inference_data() method; got {type(obj).__name__}"
        )
    if model is None or guide is None:
        raise ValueError(
            "to_inference_data(result) needs the model and the guide to draw from the fitted "
            "guide: to_inference_data(result, model=model, guide=guide, args=(...), kwargs={...})"
        )
    import arviz as az
    import xarray as xr

    num_samples, num_chains = int(num_samples), int(num_chains)
    if num_chains < 1 or num_samples % num_chains:
        raise ValueError(
            f"num_chains={num_chains} must be at least 1 and divide num_samples={num_samples}; "
            f"use num_samples={num_chains * max(1, num_samples // num_chains)}"
        )
    kwargs = dict(kwargs or {})
    params = dict(obj.params)
    ensure_prototype(guide, args, kwargs)
    point_mass = is_point_mass(guide, params, args, kwargs)
    draw_guide = guide
    if isinstance(unwrap(guide), AutoLaplaceApproximation):
        # Trained as a point mass, but its posterior is the Gaussian at the mode.
        ensure_prototype(unwrap(guide), args, kwargs)
        draw_guide, params = laplace_guide(unwrap(guide), params)
    draws = draw_with_weights(
        model, draw_guide, params, *args, num_samples=num_samples, rng_key=rng_key, **kwargs
    )
    if point_mass:
        khat, per_site, message = np.nan, {}, POINT_MASS_MESSAGE
    else:
        khat, per_site = psis_khat(draws.log_weights), site_khats(draws)
        message = khat_message(khat, guide, objective)

    attrs: dict[str, Any] = {
        "inference_library": "vigrad",
        "inference": "variational",
        "psis_khat": float(khat),
        "psis_khat_message": message,
        "guide": type(unwrap(guide)).__name__,
        "num_steps": int(obj.num_steps),
    }
    for name, k in per_site.items():
        attrs[f"psis_khat_site_{name}"] = float(k)
    if obj.diverged_at is not None:
        attrs["diverged_at"] = int(obj.diverged_at)

    def chains(x):
        x = np.asarray(x)
        return x.reshape(num_chains, num_samples // num_chains, *x.shape[1:])

    sample_stats = {"log_weight": chains(draws.log_weights)}
    for name, lw in draws.site_log_weights.items():
        sample_stats[f"log_weight_{name}"] = chains(lw)
    posterior = {k: chains(v) for k, v in draws.values.items()}
    groups: dict[str, Any] = {"posterior": posterior, "sample_stats": sample_stats}
    if log_likelihood:
        groups["log_likelihood"] = pointwise_log_likelihood(model, posterior, args, kwargs)
    site_dims, site_coords = plate_dims(model, args, kwargs, dims=dims, coords=coords)
    idata = az.from_dict(
        **groups, observed_data=draws.observed or None, dims=site_dims, coords=site_coords
    )
    idata.posterior.attrs.update(attrs)
    idata.sample_stats.attrs.update(attrs)
    losses = np.asarray(obj.losses, dtype=np.float64)
    loss = xr.Dataset(
        {"loss": (("step",), losses)},
        coords={"step": np.arange(losses.shape[0])},
        attrs={"num_steps": int(obj.num_steps)},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata.add_groups({"loss": loss}, warn_on_custom_groups=False)
    return idata
