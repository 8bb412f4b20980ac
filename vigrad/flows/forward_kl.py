"""The path gradient of the forward KL divergence ``KL(p || q)`` (maximum likelihood) for flows.

Vaitl, Winkler, Richter & Kessel (ICLR 2024, Prop. 4.1). With samples ``x ~ p`` and the target's score
``grad log p``, map each sample to the base once, ``z = stop(T^{-1}(x))``, and push it forward again
with the score recursion, ``x' = T_params(z)`` (value ``x``). Then

    grad_params KL(p || q) = E_p[ <grad_x log q(x) - grad_x log p(x), d T_params(z) / d params> ],

an unbiased estimator that vanishes sample by sample when ``q = p`` (the usual maximum-likelihood
gradient ``-grad_params log q(x)`` does not). The target may be unnormalised: only its score enters.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import paramax
from flowjax.distributions import AbstractDistribution

from vigrad.flows.score import push_forward, split_flow

stop = jax.lax.stop_gradient


def _to_base(flow: AbstractDistribution, x: jax.Array) -> jax.Array:
    _, bijections = split_flow(flow)
    for bijection in reversed(bijections):
        x = bijection.inverse(x)
    return x


def forward_kl_path_loss(
    flow: AbstractDistribution,
    samples: jax.Array,
    log_target: Callable[[jax.Array], jax.Array] | None = None,
    target_score: jax.Array | None = None,
) -> jax.Array:
    """A scalar whose value is the negative log-likelihood ``-mean log q(x)`` of the samples and
    whose parameter gradient is the forward-KL path gradient.

    Args:
        flow: the flowjax flow (its arrays are the parameters being differentiated).
        samples: ``[n, d]`` samples from the target ``p``.
        log_target: ``x -> log p~(x)`` for one point (unnormalised is fine), used for its score;
        target_score: or ``[n, d]`` precomputed ``grad log p(x)`` at the samples.
    """
    if (log_target is None) == (target_score is None):
        raise ValueError("give exactly one of log_target and target_score")
    flow = paramax.unwrap(flow)
    arrays, static = eqx.partition(flow, eqx.is_inexact_array)
    stopped = eqx.combine(jax.tree.map(stop, arrays), static)
    z = stop(jax.vmap(lambda x: _to_base(stopped, x))(samples))
    x, log_q, score = jax.vmap(lambda z_: push_forward(flow, z_))(z)
    if target_score is None:
        target_score = jax.vmap(jax.grad(log_target))(samples)
    surrogate = jnp.mean(jnp.sum(stop(score - target_score) * x, axis=-1))
    value = -jnp.mean(log_q)
    return stop(value) + surrogate - stop(surrogate)
