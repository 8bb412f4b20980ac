"""Guides that draw several samples of every latent site (NumPyro's ``multi_sample_guide``).

Such a guide returns ``S`` samples ``z_1, ..., z_S`` of each latent site along a leading axis (a
particle guide, a guide drawing with ``sample_shape=(S,)``). As in NumPyro's
``Trace_ELBO(multi_sample_guide=True)``, one particle of an objective is the whole set: the guide is
traced once with its per-site estimators, the model is scored on each sample (``jax.vmap`` over the
leading axis, each sample with its own key and the guide's plate subsamples), and

    log w = sum_s log p(x, z_s) - log q(z_1, ..., z_S).

A score-function site's learning signal is the particle's whole log weight: the model's terms of
all ``S`` samples depend on the guide's joint draw, so there is no finer downstream cost to find
(the plain score-function estimator, Williams 1992, unbiased for the same reason). Enumeration,
measure-valued derivatives and closed-form KL terms, which need a site's terms in the model, are
refused; ``numpyro.mutable`` sites are kept from the guide and refused in the model, as NumPyro
does.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from numpyro.handlers import seed, substitute, trace

from vigrad.errors import EstimatorError, ModelGuideMismatchError
from vigrad.estimators.assignment import Assignment
from vigrad.estimators.base import Estimator
from vigrad.estimators.log_prob import log_prob
from vigrad.objectives.particles import (
    ParticleDraw,
    ParticleSites,
    _check_traces,
    _estimator_log_q,
    _mutable_values,
    _SampleWithEstimators,
    _scaled,
)
from vigrad.traces import Sites, values


def multi_sample_particle(
    rng_key: jax.Array,
    params: dict,
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    assignment: Assignment,
) -> tuple[ParticleDraw, ParticleSites]:
    """One particle of a multi-sample guide (no particle axis; see the module docstring).

    ``rng_key`` holds two keys, for the guide and the model.
    """
    key_guide, key_model = rng_key
    sampler = _SampleWithEstimators(seed(substitute(guide, data=params), key_guide), assignment)
    guide_tr = trace(sampler).get_trace(*args, **kwargs)
    refused = sorted({**sampler.enumerated, **sampler.measure_valued})
    if refused:
        raise EstimatorError(
            f"Enumerate() or MVD() on {refused} with multi_sample_guide=True: the site's terms in "
            "the model are those of all the guide's samples at once, so its values cannot be "
            "summed out one by one. Use vigrad.Score() for these sites."
        )
    # R2-G2 and the local trick act where the model consumes the site (a declared linear map),
    # which here sees one of the guide's samples at a time; nothing would apply them.
    declared = sorted(
        n for n, est in sampler.chosen.items() if type(est).finish is not Estimator.finish
    )
    if declared:
        raise EstimatorError(
            f"{[type(sampler.chosen[n]).__name__ for n in declared]} on {declared} with "
            "multi_sample_guide=True: these estimators act on the linear map the model declares "
            "for the site, and the model here scores one of the guide's samples at a time. Use "
            "vigrad.Reparam() for these sites, or multi_sample_guide=False."
        )
    guide_sites = Sites(guide_tr)
    latent = guide_sites.latent
    num = _num_samples(latent)
    substituted = values(latent) | values(guide_sites.deterministic)
    plates = values(guide_sites.plates)
    mutable = _mutable_values(guide_tr)
    model_params = {**params, **mutable}
    found: dict = {}

    def score_sample(key: jax.Array, draws: dict) -> dict[str, jax.Array]:
        """Site -> the model's log density of one of the guide's samples."""
        scored = substitute(seed(substitute(model, data=model_params), key), data=draws | plates)
        model_tr = trace(scored).get_trace(*args, **kwargs)
        _check_model_trace(model_tr, guide_tr, latent, assignment)
        model_sites = Sites(model_tr)
        found["model_latents"] = tuple(model_sites.latent)
        return {
            n: jnp.sum(_scaled(s, log_prob(s["fn"], s["value"])))
            for n, s in model_sites.samples.items()
        }

    per_sample = jax.vmap(score_sample)(jax.random.split(key_model, num), substituted)
    log_p_sites = {n: jnp.sum(v) for n, v in per_sample.items()}
    log_q_sites = {}
    for n, s in guide_sites.samples.items():
        est = sampler.chosen.get(n)
        if n in sampler.log_q_terms:
            lq = sampler.log_q_terms[n]
        elif est is None:
            lq = log_prob(s["fn"], s["value"])
        else:
            lq = _estimator_log_q(n, est, s["fn"], s["value"])
        log_q_sites[n] = jnp.sum(_scaled(s, lq))

    log_p = sum(log_p_sites.values(), start=jnp.zeros(()))
    log_q = sum(log_q_sites.values(), start=jnp.zeros(()))
    score_sites = tuple(n for n, est in sampler.chosen.items() if est.is_score)
    # The score term uses the unscaled log q of the draws: subsampling scales are in the signal.
    score_log_q = {n: jnp.sum(log_prob(latent[n]["fn"], latent[n]["value"])) for n in score_sites}
    sites = ParticleSites(
        estimators=dict(sampler.chosen),
        score_sites=score_sites,
        enumerated={},
        measure_valued={},
        guide_params=frozenset(guide_sites.params),
        guide_latents=tuple(latent),
        model_latents=found["model_latents"],
    )
    draw = ParticleDraw(
        log_p,
        log_q,
        values(latent),
        score_log_q,
        {n: jax.lax.stop_gradient(log_p) for n in score_sites},
        {n: jax.lax.stop_gradient(log_q) for n in score_sites},
        mutable=mutable,
        site_log_w={
            n: log_p_sites.get(n, 0.0) - log_q_sites.get(n, 0.0)
            for n in {**log_p_sites, **log_q_sites}
        },
    )
    return draw, sites


def _num_samples(latent: dict[str, dict]) -> int:
    """``S``, the leading size every latent site of the guide shares."""
    if not latent:
        raise ModelGuideMismatchError(
            "multi_sample_guide=True: the guide has no latent sample site, so it proposes no "
            "samples. Use multi_sample_guide=False for this guide."
        )
    sizes = {n: (jnp.shape(s["value"]) or (None,))[0] for n, s in latent.items()}
    first = next(iter(sizes))
    for name, size in sizes.items():
        if size is None or size != sizes[first]:
            raise ModelGuideMismatchError(
                f"multi_sample_guide=True: site '{name}' has shape "
                f"{jnp.shape(latent[name]['value'])} but site '{first}' has {sizes[first]} "
                "samples along its leading axis. Give every latent site of the guide the same "
                "number of samples along a leading axis."
            )
    return int(sizes[first])


def _check_model_trace(
    model_tr: dict, guide_tr: dict, latent: dict[str, dict], assignment: Assignment
) -> None:
    _check_traces(model_tr, guide_tr, assignment)
    for name, site in model_tr.items():
        if site["type"] == "mutable":
            raise ModelGuideMismatchError(
                f"multi_sample_guide=True: the model's numpyro.mutable site '{name}' would be "
                "updated once per guide sample. Keep mutable state in the guide, or use "
                "multi_sample_guide=False."
            )
        if site["type"] != "sample" or site["is_observed"]:
            continue
        expected = tuple(site["fn"].shape(site["kwargs"]["sample_shape"]))
        got = tuple(jnp.shape(latent[name]["value"]))
        if got[1:] != expected:
            raise ModelGuideMismatchError(
                f"multi_sample_guide=True: site '{name}' has shape {got} in the guide, which is "
                f"not (samples, *{expected}) as the model expects. Put the guide's samples along "
                "a leading axis of the model's shape."
            )
