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

The same construction as ``genjax.vi``'s ``marginal`` objectives (Becker, Lew et al., PLDI 2024),
written as vigrad programs (:meth:`IWHVI.program`, a dozen lines): the model is paired with its
reverse model by :func:`with_reverse`, each particle draws the guide with its per-site estimators,
scores the latents under the model, and estimates ``log q(z)`` from inner draws of the reverse
model. Sticking-the-landing sites are refused in IWHVI and DIWHVI (the marginal estimate is not
linear in ``log q``) and allowed in HVI (an ELBO).

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
from numpyro.handlers import trace

from vigrad.errors import ModelGuideMismatchError
from vigrad.estimators.assignment import EstimatorSpec
from vigrad.objectives.base import Objective
from vigrad.objectives.context import ProgramContext
from vigrad.objectives.elbo import ELBO
from vigrad.objectives.program import log_mean_exp
from vigrad.traces import Sites, values


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
        self.reverse(values(Sites(tr).latent), *args, **kwargs)

    def __repr__(self) -> str:
        return f"with_reverse({self.model!r}, {self.reverse!r})"


def with_reverse(model: Callable, reverse: Callable) -> HierarchicalModel:
    """Pair ``model`` with the reverse model ``reverse(latents, *args, **kwargs)``.

    ``reverse`` samples every auxiliary site of the guide (a guide sample site the model does not
    have) given the model's latents, from distributions with learnable ``numpyro.param`` sites.
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


class HVI(ELBO):
    """The HVI bound ``E_q[log p(x, z) + log r(u | z) - log q(u, z)]``: the ELBO of
    :func:`with_reverse` ``(model, reverse)``. Every estimator (and every control variate) of the
    ELBO applies, auxiliary sites included.

    Args:
        num_particles: ``K`` independent particles averaged.
        estimators: per-site estimators (as for :class:`vigrad.ELBO`).
    """

    def program(self, p: ProgramContext):
        _require_hierarchical(p.model, "HVI")
        particles = p.particles(self.num_particles, analytic_kl=self.analytic_kl)
        for name in set(particles.sites.guide_latents) - set(particles.sites.model_latents):
            _unpaired_auxiliary(name)
        return jnp.mean(particles.log_w)


def marginal_log_weight(p: ProgramContext, num_inner: int) -> jax.Array:
    """One particle's ``log p(x, z) - log q^_M(z)``, with the importance-sampled estimate
    ``log q^_M(z) = log (1/(M+1)) sum_{m=0}^{M} q(z, u_m) / r(u_m | z)``: ``u_0`` is the guide's own
    draw, ``u_1..u_M`` are drawn from the reverse model (with their estimators' paths)."""
    hmodel = _require_hierarchical(p.model, "IWHVI and DIWHVI")
    guide = p.sample(p.guide)
    latents = p.score(hmodel.model, guide.values, *p.args, **p.kwargs)
    auxiliary = {n: v for n, v in guide.values.items() if n not in latents.values}
    log_r0 = p.score(hmodel.reverse, auxiliary, latents.values, *p.args, **p.kwargs)
    for name in set(auxiliary) - set(log_r0.values):
        _unpaired_auxiliary(name)

    def inner(p: ProgramContext) -> jax.Array:
        u = p.sample(hmodel.reverse, latents.values, *p.args, **p.kwargs)
        return p.score(p.guide, {**latents.values, **u.values}).log_prob - u.log_prob

    terms = (guide.log_prob - log_r0.log_prob)[None]
    if num_inner > 0:
        terms = jnp.concatenate([terms, p.particles(num_inner, inner)])
    return latents.log_prob - log_mean_exp(terms)


class _Marginal(Objective):
    """``F`` over ``K`` particles of :func:`marginal_log_weight` with ``M`` inner draws."""

    def __init__(
        self,
        reduce: Callable[[jax.Array], jax.Array],
        num_inner: int,
        num_particles: int,
        estimators: EstimatorSpec,
    ):
        if int(num_inner) < 0:
            raise ValueError(f"num_inner must be at least 0, got {num_inner}")
        super().__init__(num_particles, estimators)
        self.num_inner = int(num_inner)
        self.reduce = reduce

    def program(self, p: ProgramContext):
        log_w = p.particles(self.num_particles, lambda p: marginal_log_weight(p, self.num_inner))
        return self.reduce(log_w)


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
