"""A trace-time check that a site under R2-G2 reaches the loss only through its declared map.

R2-G2 conditions the reparameterisation gradient on the declared map's output. That is unbiased when
every model density that depends on the output depends on the site's noise through the output
alone; a density that also uses the site's value another way (e.g. the likelihood of ``x @ w`` with a
scale computed from ``w``) makes the conditioned gradient biased. The check traces the model
abstractly (nothing is compiled) with NumPyro's provenance tracking, giving the declared map's output
its own provenance, and rejects any density that depends on both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from numpyro.handlers import seed, substitute, trace
from numpyro.ops.provenance import eval_provenance

from vigrad.errors import EstimatorError
from vigrad.estimators.assignment import Assignment, EstimatorSpec
from vigrad.estimators.r2g2 import R2G2, GaussianNoise, LocalReparam
from vigrad.objectives.particles import GuideSites
from vigrad.traces import Sites, trace_program, values

_MAP = "$map"


def check_declared_maps(
    model: Callable,
    guide: Callable,
    *args: Any,
    estimators: EstimatorSpec = None,
    rng_key: jax.Array | None = None,
    **kwargs: Any,
) -> None:
    """Raise :class:`~vigrad.errors.EstimatorError` if a site under :class:`~vigrad.R2G2` or
    :class:`~vigrad.LocalReparam` enters a model density both through its declared map and
    otherwise.

    ``estimators`` is the objective's per-site specification (as given to ``vigrad.ELBO``); a site's
    own ``infer={"estimator": ...}`` wins over it, as in the objective.
    """
    rng_key = jax.random.PRNGKey(0) if rng_key is None else rng_key
    guide_sites = trace_program(guide, args, kwargs, rng_key=rng_key)
    params, latents = values(guide_sites.params), values(guide_sites.latent)
    assignment = Assignment(estimators)
    declared = {}
    for name, site in guide_sites.latent.items():
        est = assignment.resolve(site)
        if isinstance(est, R2G2 | LocalReparam):
            declared[name] = est
    if not declared:
        return

    def densities(**values: jax.Array) -> dict[str, jax.Array]:
        sites = {}
        for name, est in declared.items():
            out = values[name + _MAP]
            # The map's output is computed from these extras alone, so it carries the map's
            # provenance and not the site value's.
            extras = GaussianNoise(out, jnp.ones_like(out), jnp.zeros_like(out), rng_key)
            infer = {"vigrad_estimator": est, "vigrad_extras": extras}
            sites[name] = {"name": name, "value": values[name], "infer": infer}

        def latent_value(msg: dict) -> jax.Array | None:
            if msg["type"] == "sample" and not msg["is_observed"]:
                return values.get(msg["name"])
            return None

        m = substitute(seed(substitute(model, data=params), rng_key), substitute_fn=latent_value)
        model_sites = Sites(trace(GuideSites(m, sites)).get_trace(*args, **kwargs))
        return {n: s["fn"].log_prob(s["value"]) for n, s in model_sites.samples.items()}

    inputs = dict(latents)
    inputs.update({name + _MAP: latents[name] for name in declared})
    deps = eval_provenance(densities, **inputs)
    for site, dep in deps.items():
        for name, est in declared.items():
            if site != name and name in dep and name + _MAP in dep:
                raise EstimatorError(
                    f"{type(est).__name__}() on site '{name}': the density of site '{site}' "
                    f"depends on '{name}' both through its declared map and otherwise, so the site "
                    "is used outside the declared map and the conditioned gradient would be "
                    f"biased. Compute everything that meets the map's output from it alone, or "
                    f"use vigrad.Reparam() for '{name}'."
                )
