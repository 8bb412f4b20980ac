"""Stochastic-gradient Hamiltonian Monte Carlo with friction (Chen, Fox & Guestrin, "Stochastic
gradient Hamiltonian Monte Carlo", ICML 2014), unit mass.

    r ← r + ε ĝ(θ) − ε C r + N(0, 2 (C − B̂) ε),   θ ← θ + ε r

with C = ``friction`` and B̂ = ``noise_estimate`` (an estimate of the gradient noise, 0 by
default). The momentum r starts at 0 and is kept between steps: every step draws a fresh minibatch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from vigrad.sgmcmc.noise import normal_like


class SGHMCState(NamedTuple):
    position: Any
    momentum: Any


def init(position: Any) -> SGHMCState:
    return SGHMCState(position, jax.tree.map(jnp.zeros_like, position))


def step(
    rng_key: jax.Array,
    state: SGHMCState,
    grad: Any,
    step_size: jax.Array,
    friction: float = 1.0,
    noise_estimate: float = 0.0,
) -> SGHMCState:
    """One SGHMC step from ``state`` with the gradient estimate ``grad`` taken at its position."""
    noise = normal_like(rng_key, state.position)
    scale = jnp.sqrt(2.0 * (friction - noise_estimate) * step_size)
    momentum = jax.tree.map(
        lambda r, g, z: r + step_size * g - step_size * friction * r + scale * z,
        state.momentum,
        grad,
        noise,
    )
    position = jax.tree.map(lambda x, r: x + step_size * r, state.position, momentum)
    return SGHMCState(position, momentum)
