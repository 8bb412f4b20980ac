"""Stochastic-gradient Langevin dynamics (Welling & Teh, "Bayesian learning via stochastic gradient
Langevin dynamics", ICML 2011).

    θ ← θ + (ε/2) ĝ(θ) + N(0, ε I)

with ĝ an unbiased estimate of ∇ log p(θ | data). The chain samples the posterior up to an O(ε)
bias from the discretisation and the gradient noise. BlackJAX writes the same update as
θ + h ĝ + N(0, 2h), so ``step_size=ε`` here is BlackJAX's ``step_size=ε/2``.

An update rule is a pure ``(init, step)`` pair, as in BlackJAX; the gradient arrives computed, so
the same rule serves every gradient estimator::

    state = sgld.init({"w": jnp.zeros(3)})
    state = sgld.step(key, state, grad, 1e-4)     # grad: a pytree like the position
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from vigrad.sgmcmc.noise import normal_like


class SGLDState(NamedTuple):
    position: Any


def init(position: Any) -> SGLDState:
    return SGLDState(position)


def step(rng_key: jax.Array, state: SGLDState, grad: Any, step_size: jax.Array) -> SGLDState:
    """One SGLD step from ``state`` with the gradient estimate ``grad`` taken at its position."""
    noise = normal_like(rng_key, state.position)
    scale = jnp.sqrt(step_size)
    position = jax.tree.map(
        lambda x, g, z: x + 0.5 * step_size * g + scale * z, state.position, grad, noise
    )
    return SGLDState(position)
