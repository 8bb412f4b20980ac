"""The chunked run driver on a toy step: chunking, thinning, divergence and replay, device-side
chunk inputs, one compilation for every trip count. (fit's use of it is tested in test_fit.py.)"""

import jax
import jax.numpy as jnp
import numpy as np

from tests.compiles import count_compilations
from vigrad.infer.driver import _COMPILED, Step, run_chunks


def walk() -> Step:
    """x_{t+1} = x_t + t + noise(t); the output is x_{t+1}; diverges once x passes 1e3."""

    def step(x, t, consts, noise):
        x = x + t.astype(x.dtype) + noise
        return x, jnp.where(x > consts["limit"], jnp.nan, x)

    def inputs(consts, start, size, fed):
        ts = start + jnp.arange(size)
        return jax.vmap(lambda t: jax.random.normal(jax.random.fold_in(consts["key"], t)))(ts)

    return Step(step, finite=lambda x, out: jnp.isfinite(out), inputs=inputs)


def run(stop, chunk, limit=1e9, **kw):
    consts = {"key": jax.random.key(0), "limit": jnp.asarray(limit)}
    return run_chunks(
        ("test_driver.walk",), walk, jnp.zeros(()), consts, stop, chunk, progress_bar=False, **kw
    )


def test_chunking_thinning_divergence_and_one_compilation():
    whole = run(40, 40)
    assert whole.step == 40 and whole.bad_step is None
    cut = run(40, 6)  # six chunks and a short last one
    np.testing.assert_array_equal(cut.outputs, whole.outputs)
    np.testing.assert_array_equal(cut.carry, whole.carry)
    thinned = run(40, 6, thinning=3)  # the last output of each group of three, from step 0
    np.testing.assert_array_equal(thinned.outputs, whole.outputs[2::3][: 40 // 3])

    limit = float(whole.outputs[25])  # the output of step 25 is the first above the limit
    bad = run(40, 8, limit=limit - 1e-6)
    assert bad.bad_step == 25 and bad.step == 25 and not bool(bad.bad_mask)
    np.testing.assert_array_equal(bad.outputs, whole.outputs[:25])
    np.testing.assert_array_equal(bad.carry, whole.outputs[24])  # the state after step 24

    # The same runs again, short last chunks and the replay included, compile nothing: trip
    # counts are traced and the chunk is cached on the configuration.
    def again():
        run(40, 6)
        run(40, 6, thinning=3)
        run(40, 8, limit=limit - 1e-6)

    assert count_compilations(again) == 0


def test_an_uncached_configuration_runs_the_same():
    consts = {"key": jax.random.key(0), "limit": jnp.asarray(1e9)}
    before = len(_COMPILED)
    result = run_chunks(None, walk, jnp.zeros(()), consts, 12, 5, progress_bar=False)
    assert len(_COMPILED) == before
    np.testing.assert_array_equal(result.outputs, run(12, 12).outputs)


def test_warmup_keeps_no_output_and_thinning_counts_from_it():
    whole = run(40, 40)
    warm = run(40, 6, thinning=3, warmup=10)  # chunks 0-6, 6-10, then 10-16, ...
    np.testing.assert_array_equal(warm.outputs, whole.outputs[10 + 2 :: 3])
    np.testing.assert_array_equal(warm.carry, whole.carry)
