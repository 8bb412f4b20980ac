"""The fit loop: convergence, no recompilation, NaN guard; SVI interop.

Checkpoints and resuming are tested in test_checkpoint.py.
"""

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import vigrad
from tests.compiles import count_compilations
from tests.models import conjugate_guide, conjugate_model

X = jnp.array([0.5, 1.2, -0.3, 2.0, 0.9, 1.4])
POST_MEAN = float(jnp.sum(X) / (X.shape[0] + 1))
POST_SD = float(1 / jnp.sqrt(X.shape[0] + 1.0))


model, guide = conjugate_model, conjugate_guide


OBJECTIVE = vigrad.ELBO(num_particles=8, estimators={"mu": vigrad.PathGradient()})
OPTIMIZER = optax.adam(0.05)


def run(num_steps, **kw):
    return vigrad.fit(
        model,
        guide,
        OBJECTIVE,
        OPTIMIZER,
        num_steps,
        jax.random.key(1),
        X,
        progress_bar=False,
        **kw,
    )


def test_fit_converges_to_exact_posterior():
    result = run(1500, chunk_size=250)
    assert result.num_steps == 1500 and result.losses.shape == (1500,)
    assert abs(float(result.params["m"]) - POST_MEAN) < 0.01
    assert abs(float(result.params["s"]) - POST_SD) < 0.01


def test_second_call_compiles_nothing():
    # A short last chunk shares the compiled chunk; the second call reuses everything.
    first = count_compilations(lambda: run(130, chunk_size=60))
    assert first >= 1
    assert count_compilations(lambda: run(130, chunk_size=60)) == 0


REFERENCE = os.path.join(os.path.dirname(__file__), "data", "fit_reference.npz")


def reference_model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0], subsample_size=3):
        numpyro.sample("x", dist.Normal(mu, 1.0), obs=numpyro.subsample(x, event_dim=0))


def reference_nan_model(x):
    b = numpyro.param("b", 1.0)
    numpyro.factor("push", -5.0 * b + 0.0 * jnp.log(b))
    reference_model(x)


REFERENCE_CASES = {
    "path": (
        reference_model,
        vigrad.ELBO(num_particles=4, estimators={"mu": vigrad.PathGradient()}),
        optax.adam(0.05),
        60,
        25,
    ),
    "score_ma": (
        reference_model,
        vigrad.ELBO(num_particles=3, estimators={"mu": vigrad.Score(vigrad.MovingAverage(0.8))}),
        optax.adam(0.05),
        45,
        20,
    ),
    "nan": (
        reference_nan_model,
        vigrad.ELBO(num_particles=4, estimators={"mu": vigrad.PathGradient()}),
        optax.sgd(0.05),
        30,
        7,
    ),
}


@pytest.mark.optimised  # the saved values come from fully optimised programs
@pytest.mark.parametrize("case", sorted(REFERENCE_CASES))
def test_results_are_bit_identical_to_saved_values(case):
    """Losses, parameters, objective and optimiser states equal, bit for bit, those that ``fit``
    computed with its own chunk loop (before the shared driver) for the same keys: subsampled data,
    a stateful control variate, a short last chunk, and a divergence with its replay."""
    model_, objective, optimizer, num_steps, chunk = REFERENCE_CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vigrad.NonFiniteLossWarning)
        result = vigrad.fit(
            model_,
            guide,
            objective,
            optimizer,
            num_steps,
            jax.random.key(3),
            X,
            chunk_size=chunk,
            progress_bar=False,
        )
    with np.load(REFERENCE) as ref:
        np.testing.assert_array_equal(result.losses, ref[f"{case}/losses"])
        for name, value in result.unconstrained_params.items():
            np.testing.assert_array_equal(value, ref[f"{case}/params/{name}"])
        for part, tree in (("state", result.state), ("opt_state", result.opt_state)):
            for i, leaf in enumerate(jax.tree.leaves(tree)):
                np.testing.assert_array_equal(leaf, ref[f"{case}/{part}/{i}"])
        assert (result.diverged_at or -1) == int(ref[f"{case}/diverged_at"])


def test_chunking_does_not_change_the_result():
    a, b = run(120, chunk_size=120), run(120, chunk_size=40)
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-12)


def nan_model(x):
    b = numpyro.param("b", 1.0)
    # The optimiser pushes b down by 0.25 a step; the loss is NaN once b <= 0 (step 4).
    numpyro.factor("push", -5.0 * b + 0.0 * jnp.log(b))
    model(x)


def test_nan_stops_the_run_and_keeps_last_finite_params():
    with pytest.warns(vigrad.NonFiniteLossWarning, match=r"stopped at step \d+"):
        result = vigrad.fit(
            nan_model,
            guide,
            OBJECTIVE,
            optax.sgd(0.05),
            200,
            jax.random.key(0),
            X,
            progress_bar=False,
            chunk_size=20,
        )
    assert result.diverged_at == 4
    assert result.num_steps == result.diverged_at
    assert np.all(np.isfinite(result.losses))
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in result.params.values())
    assert abs(float(result.params["b"])) < 1e-9  # after the 4 finite steps: 1 - 4 * 0.25
    assert f"step {result.diverged_at}" in result.message


def test_numpyro_svi_drop_in_converges():
    svi = numpyro.infer.SVI(model, guide, optax.adam(0.05), OBJECTIVE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = svi.run(jax.random.key(0), 1500, X, progress_bar=False)
    assert abs(float(result.params["m"]) - POST_MEAN) < 0.01
    assert abs(float(result.params["s"]) - POST_SD) < 0.01


def test_loss_value_is_the_negative_elbo_estimate_not_the_surrogate():
    params = {"m": jnp.array(0.3), "s": jnp.array(0.7)}
    key = jax.random.key(5)
    for est in (vigrad.Score(), vigrad.PathGradient(), vigrad.Reparam()):
        loss = vigrad.ELBO(num_particles=3, estimators={"mu": est})
        value = loss.loss(key, params, model, guide, X)
        # Same key, same particles: every estimator reports the same estimate, whatever its
        # surrogate, and it is NumPyro's negative ELBO on those particles.
        reference = vigrad.ELBO(num_particles=3).loss(key, params, model, guide, X)
        np.testing.assert_allclose(value, reference, rtol=1e-10)
        assert abs(float(value) - float(_exact_neg_elbo(params))) < 3.0


def _exact_neg_elbo(p):
    m, s = p["m"], p["s"]
    lik = jnp.sum(-0.5 * jnp.log(2 * jnp.pi) - 0.5 * ((X - m) ** 2 + s**2))
    prior = -0.5 * jnp.log(2 * jnp.pi) - 0.5 * (m**2 + s**2)
    return -(lik + prior + 0.5 * jnp.log(2 * jnp.pi * jnp.e * s**2))


def subsampled_model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0], subsample_size=3):
        numpyro.sample("x", dist.Normal(mu, 1.0), obs=numpyro.subsample(x, event_dim=0))


def test_minibatched_model_with_numpyro_subsample_converges():
    # The plate draws 3 of the 6 points per step, scaled by 6/3: the ELBO gradient stays unbiased.
    # A decaying step size lets the iterate settle despite the subsampling noise.
    result = vigrad.fit(
        subsampled_model,
        guide,
        OBJECTIVE,
        optax.adam(optax.cosine_decay_schedule(0.05, 3000)),
        3000,
        jax.random.key(2),
        X,
        progress_bar=False,
    )
    assert abs(float(result.params["m"]) - POST_MEAN) < 0.05
