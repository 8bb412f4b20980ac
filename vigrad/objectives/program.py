"""Objectives as programs: any differentiable function of the particles' log weights.

A user writes ``F(log_w)`` for ``K`` log weights ``log w_k = log p(x, z_k) - log q(z_k)`` and gets an
objective whose gradient is an unbiased estimate of ``grad E[F]`` for every mix of per-site
estimators:

    @vigrad.objective(num_particles=8)
    def iwelbo(log_w):
        return jax.nn.logsumexp(log_w) - jnp.log(log_w.shape[0])

Pathwise sites get their gradient by differentiating ``F`` through the log weights. A score-function
site in particle ``k`` gets the learning signal ``F`` minus a per-particle baseline ``F_{-k}``: ``F``
re-evaluated with ``log w_k`` replaced by the mean of the other log weights (the geometric mean of the
other weights). ``F_{-k}`` does not depend on particle ``k``, so the estimator stays unbiased; for
the IWELBO this is exactly VIMCO's baseline (Mnih & Rezende 2016), and here it serves any ``F``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from vigrad.estimators.assignment import EstimatorSpec
from vigrad.objectives.base import Objective
from vigrad.objectives.particles import Particles
from vigrad.objectives.surrogate import Estimate

stop = jax.lax.stop_gradient


def leave_one_out_values(fn: Callable[[jax.Array], jax.Array], log_w: jax.Array) -> jax.Array:
    """``[K]``: ``fn`` with ``log_w[k]`` replaced by the mean of the other log weights."""
    k = log_w.shape[0]
    others = (jnp.sum(log_w) - log_w) / (k - 1)
    return jax.vmap(lambda i: fn(log_w.at[i].set(others[i])))(jnp.arange(k))


def broadcast_to_sites(particles: Particles, per_particle: jax.Array) -> dict[str, jax.Array]:
    """Give each score-function site the ``[K]`` signal of its particle, over the site's plates."""
    out = {}
    for site, lq in particles.score_log_q.items():
        shape = (per_particle.shape[0],) + (1,) * (lq.ndim - 1)
        out[site] = jnp.broadcast_to(per_particle.reshape(shape), lq.shape)
    return out


class Program(Objective):
    """An objective ``F(log_w)`` over ``K`` particles (see the module docstring).

    Args:
        fn: differentiable ``[K] -> scalar`` function of the log weights, to be maximised.
        num_particles: ``K``.
        estimators: per-site estimators (as for :class:`vigrad.ELBO`).
        leave_one_out: subtract the per-particle baseline ``F_{-k}`` from score-function signals
            (needs ``K >= 2``).
    """

    def __init__(
        self,
        fn: Callable[[jax.Array], jax.Array],
        num_particles: int = 1,
        estimators: EstimatorSpec = None,
        leave_one_out: bool = True,
    ):
        super().__init__(num_particles=num_particles, estimators=estimators)
        if leave_one_out and self.num_particles < 2:
            raise ValueError(
                "leave_one_out=True needs num_particles >= 2 (the baseline of particle k is built "
                "from the others); set leave_one_out=False for a single particle."
            )
        self.fn = fn
        self.leave_one_out = leave_one_out

    def program(self, particles: Particles) -> Estimate:
        value = self.fn(particles.log_w)
        log_w = stop(particles.log_w)
        signal = jnp.broadcast_to(self.fn(log_w), log_w.shape)
        if self.leave_one_out:
            signal = signal - leave_one_out_values(self.fn, log_w)
        return Estimate(value, self.path(particles), broadcast_to_sites(particles, signal), False)

    def path(self, particles: Particles) -> jax.Array:
        """The differentiable term carrying pathwise gradients (override for DReG-style terms)."""
        return self.fn(particles.log_w)


def objective(
    fn: Callable[[jax.Array], jax.Array] | None = None,
    *,
    num_particles: int = 1,
    estimators: EstimatorSpec = None,
    leave_one_out: bool | None = None,
):
    """Decorator turning ``F(log_w)`` into a :class:`Program` objective.

    ``leave_one_out`` defaults to ``True`` when ``num_particles >= 2``.
    """

    def wrap(f: Callable[[jax.Array], jax.Array]) -> Program:
        loo = num_particles >= 2 if leave_one_out is None else leave_one_out
        return Program(f, num_particles=num_particles, estimators=estimators, leave_one_out=loo)

    return wrap if fn is None else wrap(fn)


def log_mean_exp(log_w: jax.Array) -> jax.Array:
    return jax.nn.logsumexp(log_w) - jnp.log(log_w.shape[0])
