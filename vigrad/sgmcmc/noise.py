"""Standard normal noise shaped like a pytree, shared by the update rules."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def normal_like(rng_key: jax.Array, tree: Any) -> Any:
    """Independent N(0, 1) draws with the shapes and dtypes of ``tree``'s leaves.

    A single leaf uses ``rng_key`` directly: splitting it first would add a hash per step, which on
    CPU is a visible part of a small model's SGLD step.
    """
    leaves, treedef = jax.tree.flatten(tree)
    keys = [rng_key] if len(leaves) == 1 else list(jax.random.split(rng_key, len(leaves)))
    noise = [
        jax.random.normal(k, jnp.shape(x), jnp.result_type(x))
        for k, x in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, noise)
