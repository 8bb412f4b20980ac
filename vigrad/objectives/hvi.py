"""Hierarchical variational inference: guides with auxiliary variables marginalised approximately.

A hierarchical guide draws auxiliary sites ``u`` that the model does not have, then the latents
``z`` given them: ``q(z) = int q(z | u) q(u) du`` is richer than any of its conditionals, but
``log q(z)`` is intractable. A reverse model ``r(u | z)`` (a NumPyro program over the auxiliary
sites, with its own ``numpyro.param`` sites, trained with the guide) turns it into bounds:

* :class:`HVI` (Agakov & Barber 2004; Ranganath, Tran & Blei 2016): the ELBO of the extended target
  ``p(x, z) r(u | z)`` against ``q(u, z)``,
  ``E_q[log p(x, z) + log r(u | z) - log q(u, z)] = ELBO - E_q(z)[KL(q(u | z) || r(u | z))]``.
* :class:`IWHVI` (Sobolev & Vetrov, NeurIPS 2019): ``log q(z)`` replaced by the importance-sampled
  upper estimate ``log (1/(M+1)) sum_{m=0}^{M} q(z, u_m) / r(u_m | z)`` with ``u_0 ~ q(u | z)`` (the
  guide's own draw) and ``u_1..u_M ~ r(u | z)``; its expectation is at least ``log q(z)``, so the
  bound is below the ELBO and tightens as ``M`` grows. ``M = 0`` is HVI.
* :class:`DIWHVI`: the same marginal estimate inside the importance-weighted bound over ``K`` outer
  particles, ``E[log (1/K) sum_k p(x, z_k) / q^_M(z_k)]``.

The same construction as ``genjax.vi``'s marginal objectives (Becker, Lew et al., PLDI 2024), built
on vigrad's programs: the model is paired with its reverse model by :func:`with_reverse`, and the
marginal estimate enters each particle's log weight through a factor of the model, so every guide
site keeps its own estimator and the objectives are ordinary :class:`~vigrad.Program` objectives.

Example::

    def reverse(latents):
        a = numpyro.param("a", 0.0)
        numpyro.sample("u", dist.Normal(a * latents["z"], 1.0))

    hmodel = vigrad.with_reverse(model, reverse)
    result = vigrad.fit(hmodel, guide, vigrad.IWHVI(num_inner=5), optax.adam(1e-2), 2000, key)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
from numpyro.handlers import block, seed, trace
from numpyro.infer.util import log_density

from vigrad.errors import EstimatorError, ModelGuideMismatchError
from vigrad.estimators.assignment import EstimatorSpec
from vigrad.estimators.path import PathGradient
from vigrad.objectives.elbo import ELBO
from vigrad.objectives.particles import guide_site
from vigrad.objectives.program import Program, log_mean_exp

MARGINAL_SITE = "vigrad$marginal"
"""Name of the model factor that carries ``log q(z, u_0) - log q^_M(z)`` into the log weight."""


def _latent_values(tr: dict) -> dict[str, jax.Array]:
    return {n: s["value"] for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]}


class HierarchicalModel:
    """A model paired with a reverse model ``r(u | z)`` over a guide's auxiliary sites.

    Calling it runs the model, then ``reverse(latents, *args, **kwargs)`` with ``latents`` the
    model's latent values by site name; the reverse model's sample sites are the auxiliary sites.
    It is an ordinary NumPyro model (the reverse model's parameters are found by ``fit`` and
    ``numpyro.infer.SVI``), so the plain :class:`~vigrad.ELBO` of it is the HVI bound.
    """

    def __init__(self, model: Callable, reverse: Callable):
        self.model = model
        self.reverse = reverse

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        with trace() as tr:
            self.model(*args, **kwargs)
        self.reverse(_latent_values(tr), *args, **kwargs)

    def __repr__(self) -> str:
        return f"with_reverse({self.model!r}, {self.reverse!r})"


def with_reverse(model: Callable, reverse: Callable) -> HierarchicalModel:
    """Pair ``model`` with the reverse model ``reverse(latents, *args, **kwargs)``.

    ``reverse`` samples every auxiliary site of the guide (a guide sample site the model does not
    have) given the model's latents, from distributions with learnable ``numpyro.param`` sites;
    :class:`IWHVI` and :class:`DIWHVI` also draw from it, so there its distributions must be
    reparameterisable.
    """
    return HierarchicalModel(model, reverse)


def _require_hierarchical(model: Callable, name: str) -> HierarchicalModel:
    if not isinstance(model, HierarchicalModel):
        raise ModelGuideMismatchError(
            f"{name} needs the model paired with a reverse model r(aux | latents) for the guide's "
            f"auxiliary sites: pass vigrad.with_reverse(model, reverse) as the model (to "
            f"vigrad.fit or numpyro.infer.SVI), got {model!r}."
        )
    return model


def _unpaired_auxiliary(name: str) -> None:
    raise ModelGuideMismatchError(
        f"The guide's site '{name}' is neither a latent site of the model nor sampled by the "
        f"reverse model, so its density cannot be marginalised: sample '{name}' in the reverse "
        "model given to vigrad.with_reverse."
    )


def _require_no_path_gradient(structure, name: str) -> None:
    for site, est in structure.estimators.items():
        if isinstance(est, PathGradient):
            raise EstimatorError(
                f"{name}: site '{site}' uses {est!r}, whose stopped-parameter log q is not an "
                "unbiased estimator inside the marginal estimate of log q(z). Use vigrad.Reparam() "
                "or vigrad.Score() for it, or vigrad.HVI, where PathGradient is valid."
            )


class HVI(ELBO):
    """The HVI bound ``E_q[log p(x, z) + log r(u | z) - log q(u, z)]``: the ELBO of
    :func:`with_reverse` ``(model, reverse)``. Every estimator (and every control variate) of the
    ELBO applies, auxiliary sites included.

    Args:
        num_particles: ``K`` independent particles averaged.
        estimators: per-site estimators (as for :class:`vigrad.ELBO`).
    """

    def _estimate(self, rng_key, params, model, guide, args, kwargs):
        _require_hierarchical(model, "HVI")
        estimate, particles, structure = super()._estimate(
            rng_key, params, model, guide, args, kwargs
        )
        for name, site in structure.guide_trace.items():
            if site["type"] == "sample" and name not in structure.model_trace:
                _unpaired_auxiliary(name)
        return estimate, particles, structure


class _Marginal(Program):
    """A program over log weights whose ``log q(z)`` is the importance-sampled estimate."""

    def __init__(
        self,
        fn: Callable[[jax.Array], jax.Array],
        num_inner: int,
        num_particles: int,
        estimators: EstimatorSpec,
    ):
        if int(num_inner) < 0:
            raise ValueError(f"num_inner must be at least 0, got {num_inner}")
        super().__init__(fn, num_particles, estimators, leave_one_out=int(num_particles) >= 2)
        self.num_inner = int(num_inner)

    def _estimate(self, rng_key, params, model, guide, args, kwargs):
        name = type(self).__name__
        hmodel = _require_hierarchical(model, name)
        scoring = self._scoring_model(hmodel, guide, params)
        estimate, particles, structure = super()._estimate(
            rng_key, params, scoring, guide, args, kwargs
        )
        _require_no_path_gradient(structure, name)
        return estimate, particles, structure

    def _scoring_model(self, hmodel: HierarchicalModel, guide: Callable, params: dict) -> Callable:
        """The model whose log density is ``log p(x, z) + log q(z, u_0) - log q^_M(z)``: with the
        guide's ``log q(z, u_0)`` the particle's log weight is ``log p(x, z) - log q^_M(z)``."""

        def scoring(*args, **kwargs):
            with trace() as tr:
                hmodel.model(*args, **kwargs)
            latents = _latent_values(tr)
            correction = jnp.zeros(())
            key = numpyro.prng_key()
            # Outside a particle (provenance tracking, shape inference) there is no guide draw:
            # the factor keeps its place with value 0.
            if key is not None and all(guide_site(n) is not None for n in latents):
                with block():
                    aux = self._auxiliary(hmodel, latents, args, kwargs, params, key)
                    for n in aux:
                        if guide_site(n) is None:
                            raise ModelGuideMismatchError(
                                f"The reverse model samples '{n}', which is not a sample site "
                                "of the guide: the reverse model's sites must be the guide's "
                                "auxiliary sites."
                            )
                    u0 = {n: guide_site(n)["value"] for n in aux}
                    log_q0, log_q_hat = self.marginal_log_q(
                        guide, hmodel.reverse, latents, u0, args, kwargs, params, key
                    )
                    correction = log_q0 - log_q_hat
            numpyro.factor(MARGINAL_SITE, correction)

        return scoring

    @staticmethod
    def _auxiliary(hmodel, latents, args, kwargs, params, key) -> list[str]:
        tr = trace(seed(numpyro.handlers.substitute(hmodel.reverse, data=params), key))
        sites = tr.get_trace(latents, *args, **kwargs)
        aux = []
        for n, s in sites.items():
            if s["type"] != "sample" or s["is_observed"]:
                continue
            if not getattr(s["fn"], "has_rsample", False):
                raise EstimatorError(
                    f"The reverse model draws the inner samples of auxiliary site '{n}', but "
                    f"{type(s['fn']).__name__} has no reparameterised sampler (has_rsample=False). "
                    "Use a reparameterisable distribution in the reverse model, or vigrad.HVI, "
                    "which only evaluates it."
                )
            aux.append(n)
        return aux

    def marginal_log_q(
        self,
        guide: Callable,
        reverse: Callable,
        latents: dict[str, jax.Array],
        u0: dict[str, jax.Array],
        args: tuple,
        kwargs: dict,
        params: dict,
        key: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        """``log q(z, u_0)`` and ``log q^_M(z) = log (1/(M+1)) sum_m q(z, u_m) / r(u_m | z)``.

        ``u_0`` is the guide's draw; ``u_1..u_M`` are drawn from the reverse model with their
        reparameterised path, so ``r``'s parameters get a pathwise gradient.
        """
        key_guide, key_inner = jax.random.split(key)

        def log_q(u):
            values = {**latents, **u}
            lq, tr = log_density(seed(guide, key_guide), args, kwargs, {**params, **values})
            for n, site in tr.items():
                if site["type"] == "sample" and not site["is_observed"] and n not in values:
                    _unpaired_auxiliary(n)
            return lq

        def log_r(u, k):
            data = {**params, **(u or {})}
            lr, tr = log_density(seed(reverse, k), (latents, *args), kwargs, data)
            return lr, _latent_values(tr)

        log_q0 = log_q(u0)
        terms = [log_q0 - log_r(u0, key_inner)[0]]
        if self.num_inner > 0:

            def inner(k):
                lr, u = log_r(None, k)
                return log_q(u) - lr

            keys = jax.random.split(key_inner, self.num_inner)
            terms = jnp.concatenate([jnp.stack(terms), jax.vmap(inner)(keys)])
        else:
            terms = jnp.stack(terms)
        return log_q0, log_mean_exp(terms)


class IWHVI(_Marginal):
    """Importance-weighted HVI: ``E[log p(x, z) - log q^_M(z)]``, averaged over ``K`` particles.

    Args:
        num_inner: ``M`` draws from the reverse model per particle (``M = 0`` is HVI).
        num_particles: ``K``; with ``K >= 2`` score-function sites get leave-one-out baselines.
        estimators: per-site estimators (``Reparam`` or ``Score``; not ``PathGradient``).
    """

    def __init__(
        self, num_inner: int = 5, num_particles: int = 1, estimators: EstimatorSpec = None
    ):
        super().__init__(jnp.mean, num_inner, num_particles, estimators)


class DIWHVI(_Marginal):
    """Doubly importance-weighted HVI: ``E[log (1/K) sum_k p(x, z_k) / q^_M(z_k)]``.

    Args:
        num_inner: ``M`` draws from the reverse model per particle.
        num_particles: ``K`` outer particles; with ``K >= 2`` score-function sites get VIMCO's
            per-particle baselines.
        estimators: per-site estimators (``Reparam`` or ``Score``; not ``PathGradient``).
    """

    def __init__(
        self, num_inner: int = 5, num_particles: int = 5, estimators: EstimatorSpec = None
    ):
        super().__init__(log_mean_exp, num_inner, num_particles, estimators)
