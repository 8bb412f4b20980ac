"""Pareto-smoothed importance sampling (PSIS) diagnostics for a fitted guide.

A guide ``q(z)`` is also an importance-sampling proposal for the posterior, with log importance
weights ``log w = log p(x, z) - log q(z)``, ``z ~ q``. Yao, Vehtari, Simpson & Gelman (2018, "Yes,
but did it work?: Evaluating variational inference") fit a generalised Pareto distribution to the
largest weights; its shape ``k`` says how heavy the right tail of the weights is, hence how far the
guide is from the posterior where it matters most (where ``q`` is too thin):

* ``k < 0.5``: the weights have finite variance; the guide is close to the posterior and
  importance-weighted estimates with it converge fast.
* ``0.5 <= k < 0.7``: the variance is infinite but PSIS estimates are still usable, converging
  more slowly; the guide is an acceptable approximation.
* ``k >= 0.7``: the tail is too heavy for any practical number of draws; the guide misses posterior
  mass and its estimates (and its tails in particular) are not to be trusted.

The thresholds are those of Vehtari, Simpson, Gelman, Yao & Gabry (2024, "Pareto smoothed
importance sampling", JMLR). ``k`` is estimated with ArviZ's PSIS implementation.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vigrad.traces import ensure_prototype, trace_model_and_guide, values

GOOD = 0.5
"""Below this k-hat the importance weights have finite variance."""
BAD = 0.7
"""From this k-hat on the guide is not to be trusted as an approximation."""


def psis_khat(log_weights: Any) -> float | np.ndarray:
    """PSIS shape estimate ``k`` of the importance weights ``exp(log_weights)``.

    Args:
        log_weights: ``[S]`` log importance weights of ``S`` draws (at least about 100 for a useful
            estimate), or ``[..., S]`` for one estimate per leading index.

    Returns:
        ``k`` as a float (an array for batched input). When all weights are equal (the guide is
        the posterior up to rounding) there is no tail to fit and ``k`` is ``-inf``.
        See :func:`khat_message` for how to read it.
    """
    lw = np.asarray(log_weights, dtype=np.float64)
    if lw.ndim == 0 or lw.shape[-1] < 2:
        raise ValueError(f"psis_khat needs at least 2 draws on the last axis, got shape {lw.shape}")
    finite = np.isfinite(lw)
    if not np.all(finite):
        # A draw with weight -inf (z outside the model's support) carries no mass; +inf or NaN
        # means a guide draw the model cannot score at all: the tail is infinitely heavy.
        if np.any(np.isnan(lw) | (lw == np.inf)):
            return _broadcast_like(lw, np.inf)
        lw = np.where(finite, lw, np.min(np.where(finite, lw, np.inf), axis=-1, keepdims=True))
    spread = np.max(lw, axis=-1) - np.min(lw, axis=-1)
    scale = np.maximum(1.0, np.abs(np.max(lw, axis=-1)))
    constant = spread <= 1e-10 * scale
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        import arviz as az

        _, k = az.psislw(lw - np.max(lw, axis=-1, keepdims=True))
    k = np.where(constant, -np.inf, np.asarray(k, dtype=np.float64))
    return float(k) if k.ndim == 0 else k


def _broadcast_like(lw: np.ndarray, value: float) -> float | np.ndarray:
    return value if lw.ndim == 1 else np.full(lw.shape[:-1], value)


POINT_MASS_MESSAGE = (
    "does not apply: the guide is a point mass (a MAP or maximum-likelihood estimate), whose "
    "importance weights are equal by construction; it carries no posterior uncertainty. For "
    "uncertainty use AutoLaplaceApproximation (Gaussian at the mode) or fit a Gaussian or flow guide"
)


def khat_message(k: float, guide: Any = None, objective: Any = None) -> str:
    """A one-line reading of a PSIS k-hat, with the thresholds 0.5 and 0.7.

    ``k < 0.5`` good (finite-variance weights: the guide is close to the posterior); ``0.5 <= k <
    0.7`` ok (usable, slower convergence of importance-weighted estimates); ``k >= 0.7`` bad (the
    guide misses posterior mass: do not trust it, its tails least of all). See the module
    docstring for the references. When ``guide`` and ``objective`` are given, the advice is for
    them (:func:`vigrad.diagnostics.guides.guide_advice`): a mean-field guide is told to try a
    full-rank one, a full-rank guide a flow, an ELBO fit a mass-covering objective, an
    importance-weighted fit more particles.
    """
    from vigrad.diagnostics.guides import guide_advice

    k = float(k)
    if np.isnan(k):
        return "unknown: k-hat could not be estimated"
    if k == -np.inf:
        return (
            "good: all importance weights are equal, the guide matches the posterior (check that "
            "the guide is not a point mass, for which k-hat does not apply)"
        )
    if k < GOOD:
        return "good: the guide is close to the posterior; importance weights have finite variance"
    if k < BAD:
        return (
            "ok: usable, but importance-weighted estimates converge slowly; the guide is "
            f"somewhat too narrow or misplaced; {guide_advice(guide, objective)}"
        )
    return (
        "bad: the guide misses posterior mass and is not to be trusted, its tails least of all; "
        + guide_advice(guide, objective)
    )


@dataclasses.dataclass
class Draws:
    """Guide draws at fixed parameters, each with its log importance weight.

    Attributes:
        values: model site name -> ``[S, ...]`` values of the model's latent and deterministic sites.
        observed: observed model site name -> its value (from one trace).
        log_weights: ``[S]`` ``log p(x, z) - log q(z)`` per draw.
        site_log_weights: latent site name -> ``[S]`` the site's local log weight (see
            :func:`site_khats`); only sites that a non-degenerate guide site samples.
    """

    values: dict[str, np.ndarray]
    observed: dict[str, np.ndarray]
    log_weights: np.ndarray
    site_log_weights: dict[str, np.ndarray]


def _scaled_sum(site: dict) -> jax.Array:
    lp = site["fn"].log_prob(site["value"])
    if site["scale"] is not None:
        lp = site["scale"] * lp
    return jnp.sum(lp)


def _parents(model: Callable, args: tuple, kwargs: dict) -> dict[str, set[str]] | None:
    """Each model sample site's direct latent parents (itself included), or ``None`` if the
    dependency analysis cannot run on this model."""
    from numpyro.infer.inspect import get_dependencies

    try:
        deps = get_dependencies(model, args, kwargs)["prior_dependencies"]
    except Exception:
        return None
    return {name: set(parents) for name, parents in deps.items()}


def draw_with_weights(
    model: Callable,
    guide: Callable,
    params: dict,
    *args: Any,
    num_samples: int = 1000,
    rng_key: jax.Array | None = None,
    **kwargs: Any,
) -> Draws:
    """Draw ``num_samples`` joint samples from the guide at ``params`` and score them under the model.

    The guide is run with ``params`` substituted for its ``numpyro.param`` sites (constrained values,
    as in :attr:`vigrad.FitResult.params`); the model is replayed on each guide trace. ``log p`` and
    ``log q`` are those of NumPyro's ``Trace_ELBO`` (all sample sites, with their subsampling
    scales), so the weights are exactly the ones whose mean the ELBO is. A model that subsamples its
    data should be run on all of it here, or each draw sees a different minibatch.

    A site's local log weight is ``sum_s log p_s - log q_z`` over the model terms ``s`` that have
    ``z`` as a direct parent (its own prior included): the part of ``log w`` that moves with ``z``
    when the rest is held fixed.
    """
    rng_key = jax.random.key(0) if rng_key is None else rng_key
    params = dict(params)
    ensure_prototype(guide, args, kwargs)
    parents = _parents(model, args, kwargs)

    def one(key):
        key_guide, key_model = jax.random.split(key)
        traced = trace_model_and_guide(
            model, guide, args, kwargs, params=params, guide_key=key_guide, model_key=key_model
        )
        log_p = {n: _scaled_sum(s) for n, s in traced.model.samples.items()}
        log_q = {n: _scaled_sum(s) for n, s in traced.guide.latent.items()}
        log_w = sum(log_p.values(), start=jnp.zeros(())) - sum(log_q.values(), start=jnp.zeros(()))
        site_lw = {}
        drawn = traced.guide.sampled
        for n in traced.model.latent if parents is not None else ():
            if n in drawn:
                local = [lp for m, lp in log_p.items() if n in parents.get(m, ())]
                site_lw[n] = sum(local, start=jnp.zeros(())) - log_q[n]
        return values({**traced.model.latent, **traced.model.deterministic}), log_w, site_lw

    keys = jax.random.split(rng_key, int(num_samples))
    drawn, log_w, site_lw = jax.jit(jax.vmap(one))(keys)
    observed = _observed(model, guide, params, args, kwargs)
    return Draws(
        values={k: np.asarray(v) for k, v in drawn.items()},
        observed=observed,
        log_weights=np.asarray(log_w),
        site_log_weights={k: np.asarray(v) for k, v in site_lw.items()},
    )


def _observed(model: Callable, guide: Callable, params: dict, args: tuple, kwargs: dict) -> dict:
    """The model's observed data, found by tracing abstractly (data are concrete constants there;
    an observed value computed from parameters is not data and is left out)."""
    observed = trace_model_and_guide(
        model, guide, args, kwargs, params=params, abstract=True
    ).model.observed
    return {
        n: np.asarray(s["value"])
        for n, s in observed.items()
        if not isinstance(s["value"], jax.core.Tracer) and not n.startswith("_")
    }


def site_khats(draws: Draws) -> dict[str, float]:
    """Per-site k-hat from the sites' local log weights (see :func:`draw_with_weights`).

    A localisation aid, not a separate guarantee: it is the k-hat of the guide factor of one site
    against the model terms that site enters, with the other sites at their sampled values. When
    the joint k-hat is large, the sites with large local k-hat are where the guide is too narrow.
    """
    return {name: psis_khat(lw) for name, lw in draws.site_log_weights.items()}


def log_importance_weights(
    model: Callable,
    guide: Callable,
    params: dict,
    *args: Any,
    num_samples: int = 1000,
    rng_key: jax.Array | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """``[num_samples]`` log importance weights ``log p(x, z) - log q(z)``, ``z ~ q`` at ``params``."""
    return draw_with_weights(
        model, guide, params, *args, num_samples=num_samples, rng_key=rng_key, **kwargs
    ).log_weights
