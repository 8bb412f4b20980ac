"""A constant preconditioner from the Laplace approximation at a control-variate centre.

    M = H⁻¹,   H = −∇² log p(θ̂ | x)

on all the data at the centre θ̂ (unconstrained, flattened), used by the update rule of
:mod:`vigrad.sgmcmc.preconditioned_sgld` (θ ← θ + (ε/2) M ĝ + N(0, ε M); Girolami & Calderhead
2011 with a constant metric, Ahn, Korattikara & Welling 2012). With M the posterior covariance
near the mode every direction moves at the same rate, so ε is of order 0.1 to 1 whatever the data
size. H's eigenvalues are floored at ``jitter`` times the largest, so that M exists when H is
singular or indefinite (a mode of a non-convex posterior found by stochastic optimisation). The
Hessian costs d full-data gradient evaluations, once: use it for up to a few thousand latents.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from vigrad.sgmcmc.control_variates import ControlVariates
from vigrad.sgmcmc.minibatch import Position, Problem


class CentreAndMetric(NamedTuple):
    position: Any
    full_grad: Any
    scale_tril: jax.Array


@dataclasses.dataclass(frozen=True)
class LaplaceMetric:
    """Wraps a control-variate estimator: its gradient unchanged, plus ``scale_tril`` = S with
    S Sᵀ = M for the update rule."""

    base: ControlVariates = ControlVariates()
    jitter: float = 1e-6

    def prepare(self, problem: Problem, rng_key: jax.Array, position: Position) -> CentreAndMetric:
        centre = self.base.prepare(problem, rng_key, position)
        scale_tril = _scale_tril(problem, centre.position, jnp.asarray(self.jitter))
        return CentreAndMetric(centre.position, centre.full_grad, scale_tril)

    def start(self, aux: CentreAndMetric) -> Position:
        return aux.position

    def estimate(self, problem, aux, position, rng_key, t, chain_key) -> Position:
        return self.base.estimate(problem, aux, position, rng_key, t, chain_key)


@jax.jit
def _scale_tril(problem: Problem, centre: Position, jitter: jax.Array) -> jax.Array:
    flat, unravel = ravel_pytree(centre)
    all_idx = jnp.arange(problem.num_data)

    def neg_log_post(x):
        prior, lik = problem.log_density(unravel(x), all_idx)
        return -(prior + lik)

    h = jax.hessian(neg_log_post)(flat)
    # M = V diag(1/λ) Vᵀ with the eigenvalues floored, so M stays positive definite; the square
    # root V diag(λ^-1/2) serves as chol(M): N(0, M) is the same.
    lam, vec = jnp.linalg.eigh(0.5 * (h + h.T))
    lam = jnp.maximum(lam, jitter * jnp.max(jnp.abs(lam)))
    return vec * lam**-0.5
