"""The unrolled Threefry implementations draw JAX's own bits and derive JAX's own keys."""

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers

from vigrad.random import UNROLLED_KEY_DERIVATION, unrolled, unrolled_key_derivation

SPLIT_SHAPES = [(), (1,), (3,), (2, 5)]
FOLD_INS = [0, 1, 7, 2**31 + 5, 2**32 - 1]


def _data(keys):
    return np.asarray(jax.random.key_data(keys))


@pytest.mark.parametrize("bits", [8, 16, 32, 64])
def test_unrolled_threefry_draws_the_same_bits_as_jax(bits):
    key = jax.random.PRNGKey(14)
    fast = unrolled(key)
    dtype = np.dtype(f"uint{bits}")

    # Every shape in one compiled function per key type, rather than an eager compile per draw.
    @jax.jit
    def draws(k):
        return [jax.random.bits(k, shape, dtype) for shape in [(), (7,), (3, 5)]]

    for a, b in zip(draws(fast), draws(key), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(jax.random.normal(fast, (9,)), jax.random.normal(key, (9,)))
    typed = jax.random.key(14)
    assert jax.random.key_impl(unrolled(typed)) == jax.random.key_impl(fast)
    assert unrolled(jax.random.key(0, impl="rbg")).shape == ()


def _derivations(key, batch):
    """Every split shape and fold-in, of one key and of a batch of keys, and a draw."""
    splits = [jax.random.split(key, s) for s in SPLIT_SHAPES]
    batched = [jax.vmap(lambda k, s=s: jax.random.split(k, s))(batch) for s in SPLIT_SHAPES]
    folds = [jax.random.fold_in(key, d) for d in FOLD_INS]
    traced = jax.vmap(lambda t: jax.random.fold_in(key, t))(np.arange(4, dtype=np.int32))
    return [*splits, *batched, *folds, traced], jax.random.normal(splits[2][1], (5,))


def test_unrolled_key_derivation_derives_the_same_keys_as_jax():
    key = jax.random.key(11)
    batch = jax.random.split(jax.random.key(5), 4)
    expected_keys, expected_draw = jax.jit(_derivations)(key, batch)
    fast = jax.jit(
        lambda k, b: _derivations(unrolled_key_derivation(k), unrolled_key_derivation(b))
    )
    keys, draw = fast(key, batch)
    assert jax.random.key_impl(keys[0]) == UNROLLED_KEY_DERIVATION
    for a, b in zip(keys, expected_keys, strict=True):
        np.testing.assert_array_equal(_data(a), _data(b))
    np.testing.assert_array_equal(draw, expected_draw)
    # The comparison can fail: distinct counters give distinct keys.
    fold = lambda d: _data(jax.random.fold_in(unrolled_key_derivation(key), d))
    assert not np.array_equal(fold(1), fold(2))


def test_numpyro_seed_draws_the_same_values_from_either_key():
    def model():
        numpyro.sample("a", dist.Normal(0.0, 1.0))
        numpyro.sample("b", dist.Gamma(2.0, 1.0).expand([3]))
        numpyro.sample("c", dist.Categorical(probs=np.full(4, 0.25)))

    def values(key):
        tr = handlers.trace(handlers.seed(model, key)).get_trace()
        return {name: site["value"] for name, site in tr.items()}

    key = jax.random.key(3)
    fast = unrolled_key_derivation(key)
    for name, value in jax.jit(values)(fast).items():
        np.testing.assert_array_equal(value, jax.jit(values)(key)[name])
    rbg = jax.random.key(0, impl="rbg")
    assert unrolled_key_derivation(rbg) is rbg
