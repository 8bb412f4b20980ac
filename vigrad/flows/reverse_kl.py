"""The reverse KL ``KL(q || p~)`` of a flowjax flow to an unnormalised target, with the fast path
gradient; the negative ELBO of a NumPyro-free problem (for a NumPyro model and guide use
``vigrad.ELBO`` with :class:`vigrad.flows.FlowPathGradient`)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flowjax.distributions import AbstractDistribution

from vigrad.flows.score import path_log_q


def reverse_kl_path_loss(
    flow: AbstractDistribution,
    rng_key: jax.Array,
    log_target: Callable[[jax.Array], jax.Array],
    num_samples: int,
) -> jax.Array:
    """``mean_k [log q(x_k) - log p~(x_k)]`` over ``num_samples`` draws; its gradient in the flow's
    arrays is the path gradient (sticking the landing), computed with the forward score recursion.

    Args:
        flow: the flowjax flow.
        rng_key: a key (typed or raw).
        log_target: ``x -> log p~(x)`` for one point.
        num_samples: the number of draws.
    """
    x, log_q = path_log_q(flow, rng_key, (num_samples,))
    return jnp.mean(log_q - jax.vmap(log_target)(x))
