"""SGLD with a constant metric M (Girolami & Calderhead, "Riemann manifold Langevin and Hamiltonian
Monte Carlo methods", JRSS B 2011, with a position-independent metric; Ahn, Korattikara & Welling,
"Bayesian posterior sampling via stochastic gradient Fisher scoring", ICML 2012).

    θ ← θ + (ε/2) M ĝ(θ) + N(0, ε M),   M = S Sᵀ

on the flattened position. Any positive-definite M leaves the posterior invariant; with M near the
posterior covariance every direction moves at the same rate, so a strongly correlated posterior
mixes as fast as an isotropic one. ``scale_tril`` is S (any square root of M serves: N(0, M) is
the same); it is data, computed once (:class:`vigrad.sgmcmc.laplace_metric.LaplaceMetric`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from vigrad.sgmcmc.sgld import SGLDState, init

__all__ = ["init", "step"]


def step(
    rng_key: jax.Array, state: SGLDState, grad: Any, step_size: jax.Array, scale_tril: jax.Array
) -> SGLDState:
    """One step with metric ``scale_tril @ scale_tril.T`` and the gradient estimate ``grad``."""
    flat, unravel = ravel_pytree(state.position)
    g = ravel_pytree(grad)[0]
    z = jax.random.normal(rng_key, flat.shape, flat.dtype)
    drift = scale_tril @ (scale_tril.T @ g)
    moved = flat + 0.5 * step_size * drift + jnp.sqrt(step_size) * (scale_tril @ z)
    return SGLDState(unravel(moved))
