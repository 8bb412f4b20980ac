"""Preconditioned SGLD with an RMSprop preconditioner (Li, Chen, Carlson & Carin, "Preconditioned
stochastic gradient Langevin dynamics for deep neural networks", AAAI 2016).

    V ← α V + (1 − α) ĝ ⊙ ĝ,   G = 1 / (λ + √V),   θ ← θ + (ε/2) G ĝ + N(0, ε G)

with α = ``alpha`` and λ = ``eps``. The Γ(θ) correction term is dropped, as in the paper's
experiments; its effect vanishes as V settles.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from vigrad.sgmcmc.noise import normal_like


class PSGLDState(NamedTuple):
    position: Any
    square_avg: Any


def init(position: Any) -> PSGLDState:
    return PSGLDState(position, jax.tree.map(jnp.zeros_like, position))


def step(
    rng_key: jax.Array,
    state: PSGLDState,
    grad: Any,
    step_size: jax.Array,
    alpha: float = 0.99,
    eps: float = 1e-5,
) -> PSGLDState:
    """One pSGLD step from ``state`` with the gradient estimate ``grad`` taken at its position."""
    square_avg = jax.tree.map(
        lambda v, g: alpha * v + (1.0 - alpha) * g * g, state.square_avg, grad
    )
    noise = normal_like(rng_key, state.position)

    def update(x, g, v, z):
        precond = 1.0 / (eps + jnp.sqrt(v))
        return x + 0.5 * step_size * precond * g + jnp.sqrt(step_size * precond) * z

    position = jax.tree.map(update, state.position, grad, square_avg, noise)
    return PSGLDState(position, square_avg)
