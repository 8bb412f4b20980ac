"""Threefry-2x32 with the rounds unrolled: JAX's bits, computed in operations XLA fuses.

JAX lowers its Threefry-2x32 hash (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy
as 1, 2, 3", SC 2011) on CPU as a rolled loop of five iterations, to keep compilation short. In a
loop of small steps every key split, fold-in and draw is then a small loop of its own, each of
whose iterations runs as separate kernels. The two PRNG implementations here have the key
layout and the bits of JAX's default ``threefry2x32`` (partitionable counters, JAX's default),
with the rounds unrolled in ``jax.numpy`` where that is faster (tested bit for bit):

- :data:`UNROLLED_THREEFRY` unrolls the draws (random bits) and lets JAX split and fold in. It
  serves SG-MCMC, whose keys are derived before the step loop and whose draws are read once.
- :data:`UNROLLED_KEY_DERIVATION` unrolls splits and fold-ins and lets JAX draw. It serves
  ``fit``, whose step derives a chain of keys before each draw: the step, the particle block, the
  particles, guide and model, and NumPyro's ``seed`` handler, one split per site.

Each unrolled split and fold-in ends in an optimisation barrier. Without it, XLA copies the whole
chain of integer operations that made a key into every fusion that reads it (a key is read by the
next split and by a draw, each of whose operands is its own fusion): on eight schools the first
compile of ``fit``'s step took 45% longer than with JAX's rolled hashes. With it, every hash is
computed once, and the compile is shorter than with the rolled hashes. The draws stay JAX's in
``fit``: unrolled, they made a step faster still, but a drawn value has many readers, and a
40-site model's first fit took 40% longer than with the draws rolled.

Draws and keys do not depend on the implementation that made them, so a run's results do not
either.
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


def _derived_keys(key: jax.Array, low: jax.Array) -> jax.Array:
    """The keys hashed from ``key`` at the counters ``(0, low)``, one per element of ``low``. The
    barrier has XLA compute them once, however many fusions read them."""
    bits1, bits2 = threefry2x32(key[0], key[1], jnp.zeros_like(low), low)
    return jax.lax.optimization_barrier(jnp.stack([bits1, bits2], axis=-1))


def _split(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    # Key i of the split is the hash of the counter i, as in JAX's partitionable split.
    return _derived_keys(key, jax.lax.iota(np.uint32, math.prod(shape)).reshape(shape))


def _fold_in(key: jax.Array, data: jax.Array) -> jax.Array:
    # JAX hashes the data (a uint32) as the counter (0, data).
    return _derived_keys(key, jnp.asarray(data).astype(np.uint32))


def _default(key: jax.Array) -> jax.Array:
    return jax.random.wrap_key_data(key, impl="threefry2x32")


def _seed(seed: jax.Array) -> jax.Array:
    return jax.random.key_data(jax.random.key(seed, impl="threefry2x32"))


UNROLLED_THREEFRY = jax.extend.random.define_prng_impl(
    key_shape=(2,),
    seed=_seed,
    split=lambda key, shape: jax.random.key_data(jax.random.split(_default(key), shape)),
    random_bits=_random_bits,
    fold_in=lambda key, data: jax.random.key_data(jax.random.fold_in(_default(key), data)),
    name="unrolled_threefry2x32",
    tag="ut",
)

UNROLLED_KEY_DERIVATION = jax.extend.random.define_prng_impl(
    key_shape=(2,),
    seed=_seed,
    split=_split,
    random_bits=lambda key, bit_width, shape: jax.random.bits(
        _default(key), shape, np.dtype(f"uint{bit_width}")
    ),
    fold_in=_fold_in,
    name="threefry2x32_unrolled_key_derivation",
    tag="uk",
)


def _as(keys: jax.Array, impl) -> jax.Array:
    """``keys`` (raw ``uint32[..., 2]`` or typed ``threefry2x32``) as typed keys of ``impl``;
    keys of another implementation, or any keys when JAX's Threefry counters are not the
    partitionable ones these implementations reproduce, are returned unchanged."""
    if not jax.config.jax_threefry_partitionable:
        return keys
    if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        if str(jax.random.key_impl(keys)) != "threefry2x32":
            return keys
        keys = jax.random.key_data(keys)
    return jax.random.wrap_key_data(keys, impl=impl)


def unrolled(keys: jax.Array) -> jax.Array:
    """``keys`` as keys of :data:`UNROLLED_THREEFRY` (unrolled draws), where they can be."""
    return _as(keys, UNROLLED_THREEFRY)


def unrolled_key_derivation(keys: jax.Array) -> jax.Array:
    """``keys`` as keys of :data:`UNROLLED_KEY_DERIVATION` (unrolled splits and fold-ins), where
    they can be."""
    return _as(keys, UNROLLED_KEY_DERIVATION)
