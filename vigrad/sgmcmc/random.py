"""Threefry-2x32 random bits with the rounds unrolled, for the draws inside the sampling loop.

JAX lowers its Threefry-2x32 hash (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy
as 1, 2, 3", SC 2011) on CPU as a rolled loop of five iterations, to keep compilation short. Inside
a sampler's step loop each minibatch draw and each noise draw then runs its own small loop, and on
a small model those loops cost about half of a step. :data:`UNROLLED_THREEFRY` is a PRNG
implementation with the same key layout and the same bits as JAX's default ``threefry2x32``
(partitionable counters), written with the rounds unrolled in ``jax.numpy``, so that XLA fuses a
draw into one elementwise kernel. Splitting and folding in delegate to JAX's ``threefry2x32``.
The bits are identical (tested), so draws do not depend on which implementation made them.
"""

from __future__ import annotations

import math

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x: jax.Array, d: int) -> jax.Array:
    return (x << np.uint32(d)) | (x >> np.uint32(32 - d))


def threefry2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array, x2: jax.Array) -> tuple:
    """The Threefry-2x32 block function, 20 rounds, key (k1, k2), counters (x1, x2)."""
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = x1 ^ _rotate_left(x2, r)
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def _random_bits(key: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
    size = math.prod(shape)
    if size >= 2**32:
        raise ValueError(f"random bits for {size} values: at most 2**32 - 1 per draw")
    # The counter of element i is the 64-bit i as (high word, low word), as in JAX.
    low = jax.lax.iota(np.uint32, size).reshape(shape)
    bits1, bits2 = threefry2x32(key[0], key[1], jnp.zeros_like(low), low)
    dtype = np.dtype(f"uint{bit_width}")
    if bit_width == 64:
        return (bits1.astype(dtype) << dtype.type(32)) | bits2.astype(dtype)
    return (bits1 ^ bits2).astype(dtype)


def _default(key: jax.Array) -> jax.Array:
    return jax.random.wrap_key_data(key, impl="threefry2x32")


UNROLLED_THREEFRY = jax.extend.random.define_prng_impl(
    key_shape=(2,),
    seed=lambda seed: jax.random.key_data(jax.random.key(seed, impl="threefry2x32")),
    split=lambda key, shape: jax.random.key_data(jax.random.split(_default(key), shape)),
    random_bits=_random_bits,
    fold_in=lambda key, data: jax.random.key_data(jax.random.fold_in(_default(key), data)),
    name="unrolled_threefry2x32",
    tag="ut",
)


def unrolled(keys: jax.Array) -> jax.Array:
    """``keys`` (raw ``uint32[..., 2]`` or typed ``threefry2x32``) as typed keys of
    :data:`UNROLLED_THREEFRY`; keys of another implementation are returned unchanged."""
    if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        if str(jax.random.key_impl(keys)) != "threefry2x32":
            return keys
        keys = jax.random.key_data(keys)
    return jax.random.wrap_key_data(keys, impl=UNROLLED_THREEFRY)
