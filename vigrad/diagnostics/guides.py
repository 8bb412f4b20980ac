"""What kind of guide a fit used, as the diagnostics need to know it.

* A point mass (``AutoDelta``, or any guide whose every latent site is a ``Delta`` without an
  auxiliary site behind it) is a MAP or maximum-likelihood estimate, not a distribution: its
  importance weights are all equal by construction, so PSIS k-hat says nothing about it.
* ``AutoLaplaceApproximation`` trains a point mass, but its posterior is the Gaussian
  N(θ̂, H⁻¹) with H the Hessian of −log p(x, θ) at the mode in unconstrained space (NumPyro's
  ``get_posterior``); the diagnostics draw from that Gaussian, through an
  ``AutoMultivariateNormal`` with the same prefix and latent layout.
* Otherwise the family (mean-field, full-rank, flow) decides what a better guide would be when
  k-hat is large.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import jax
from numpyro.distributions import Delta
from numpyro.infer import autoguide
from numpyro.primitives import Messenger

from vigrad.traces import trace_program

MEAN_FIELD = (autoguide.AutoNormal, autoguide.AutoDiagonalNormal)
FULL_RANK = (
    autoguide.AutoMultivariateNormal,
    autoguide.AutoLowRankMultivariateNormal,
    autoguide.AutoLaplaceApproximation,
)


def unwrap(guide: Callable) -> Callable:
    """The guide inside any NumPyro handlers (``substitute(guide, ...)`` and the like)."""
    while isinstance(guide, Messenger) and guide.fn is not None:
        guide = guide.fn
    return guide


def is_point_mass(guide: Callable, params: dict, args: tuple, kwargs: dict) -> bool:
    """Every latent site of ``guide`` is a ``Delta`` and none is drawn from an auxiliary site."""
    if isinstance(unwrap(guide), autoguide.AutoDelta):
        return True
    if isinstance(unwrap(guide), autoguide.AutoLaplaceApproximation):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sites = list(trace_program(guide, args, kwargs, params=params).latent.values())
    auxiliary = any(s.get("infer", {}).get("is_auxiliary") for s in sites)
    return bool(sites) and not auxiliary and all(isinstance(s["fn"], Delta) for s in sites)


def _mode_and_cholesky(guide: autoguide.AutoLaplaceApproximation, params: dict) -> tuple:
    transform = guide.get_transform(params)
    return transform.loc, transform.scale_tril


def laplace_guide(
    guide: autoguide.AutoLaplaceApproximation, params: dict
) -> tuple[autoguide.AutoMultivariateNormal, dict]:
    """The Laplace posterior N(θ̂, H⁻¹) of a fitted ``AutoLaplaceApproximation`` as an
    ``AutoMultivariateNormal`` and its parameters (``guide`` must have run once, e.g. through
    :func:`vigrad.diagnostics.gradients.ensure_prototype`)."""
    # Compiled: run op by op, the Hessian's many small operations would each compile on their own.
    loc, scale_tril = jax.jit(functools.partial(_mode_and_cholesky, guide))(params)
    # The same model and init give the same prototype trace, hence the same latent layout.
    gaussian = autoguide.AutoMultivariateNormal(
        guide.model, prefix=guide.prefix, init_loc_fn=guide.init_loc_fn
    )
    new_params = {k: v for k, v in params.items() if not k.startswith(f"{guide.prefix}_")}
    new_params[f"{guide.prefix}_loc"] = loc
    new_params[f"{guide.prefix}_scale_tril"] = scale_tril
    return gaussian, new_params


def guide_advice(guide: Any, objective: Any = None) -> str:
    """What to try when k-hat is large, for this guide family and this objective."""
    from vigrad.flows.distribution import AutoFlow

    guide = unwrap(guide)
    if isinstance(guide, autoguide.AutoLaplaceApproximation):
        better = (
            "fit the Gaussian by VI instead of the Laplace approximation at the mode "
            "(AutoMultivariateNormal), or a flow guide (vigrad.flows.AutoFlow)"
        )
    elif isinstance(guide, MEAN_FIELD):
        better = (
            "a full-rank guide (AutoMultivariateNormal, AutoLowRankMultivariateNormal) to capture "
            "posterior correlations, or a flow guide (vigrad.flows.AutoFlow)"
        )
    elif isinstance(guide, FULL_RANK):
        better = (
            "a flow guide (vigrad.flows.AutoFlow) for skewed or heavy-tailed posteriors, or a "
            "reparameterised model (e.g. non-centred hierarchies)"
        )
    elif isinstance(guide, (AutoFlow, autoguide.AutoIAFNormal, autoguide.AutoBNAFNormal)):
        better = "a deeper or wider flow, or a reparameterised model (e.g. non-centred hierarchies)"
    else:
        better = "a richer guide (full-rank, flow) or a reparameterised model"
    name = type(objective).__name__ if objective is not None else None
    k = getattr(objective, "num_particles", None)
    if name is None:
        objective_advice = "or a mass-covering objective (IWELBO, Renyi with alpha < 1)"
    elif name in ("ELBO", "Trace_ELBO", "TraceMeanField_ELBO", "TraceGraph_ELBO"):
        objective_advice = (
            f"or, instead of {name} (which fits q to the mode and under-covers the tails), a "
            "mass-covering objective (vigrad.IWELBO with 8 or more particles, vigrad.RenyiELBO "
            "with alpha < 1)"
        )
    else:
        objective_advice = (
            f"or more particles for {name}"
            + (f" (now {k})" if k is not None else "")
            + ": the importance-weighted bound tightens as K grows"
        )
    return f"try {better}, {objective_advice}"
