"""SG-MCMC kernels and driver on models with closed-form posteriors (their runs across devices are
in test_scaling.py)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import vigrad.sgmcmc as sg
from tests.compiles import count_compilations
from vigrad.errors import DataError
from vigrad.sgmcmc.minibatch import Target

jax.config.update("jax_enable_x64", True)

N, PRIOR_SD, SIGMA = 200, 3.0, 1.0


def gaussian_mean(x):
    mu = numpyro.sample("mu", dist.Normal(jnp.zeros(2), PRIOR_SD).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("obs", dist.Normal(mu, SIGMA).to_event(1), obs=numpyro.subsample(x, 1))


@pytest.fixture(scope="module")
def data():
    return jax.random.normal(jax.random.PRNGKey(0), (N, 2)) + jnp.array([1.0, -1.0])


def posterior(x):
    prec = 1 / PRIOR_SD**2 + x.shape[0] / SIGMA**2
    return np.asarray(x.sum(0) / SIGMA**2 / prec), prec


def sgld_stationary_variance(x, eps, batch):
    """Exact stationary variance of SGLD on this model (an AR(1) chain per coordinate)."""
    _, prec = posterior(x)
    noise_var = x.shape[0] ** 2 / batch * np.asarray(x.var(0)) / SIGMA**4
    rho = 1 - eps * prec / 2
    return (eps + eps**2 * noise_var / 4) / (1 - rho**2), rho


def hot_step(rng_key, state, grad, step_size):
    """Negative control: BlackJAX's noise √(2ε) with this package's ε/2 drift (temperature 2)."""
    z = jax.random.normal(rng_key, state.position["mu"].shape)
    mu = state.position["mu"] + 0.5 * step_size * grad["mu"] + jnp.sqrt(2 * step_size) * z
    return sg.SGLDState({"mu": mu})


def HotSGLD(step_size):  # noqa: N802
    return sg.Kernel.of(sg.Update(sg.sgld.init, hot_step), sg.Minibatch(), step_size)


SGLD_EPS, SGLD_BATCH, SGLD_STEPS, SGLD_CHAINS = 5e-4, 20, 4000, 8


def run_sgld(kernel, x):
    return sg.sample(
        gaussian_mean,
        kernel,
        SGLD_STEPS,
        SGLD_BATCH,
        SGLD_CHAINS,
        jax.random.PRNGKey(1),
        x,
        num_warmup=200,
        progress_bar=False,
    )


def stationary_z(draws, x):
    """z-scores of the chains' mean and variance against SGLD's exact stationary law."""
    m, _ = posterior(x)
    var, rho = sgld_stationary_variance(x, SGLD_EPS, SGLD_BATCH)
    n = draws.shape[0] * draws.shape[1]
    mean_se = np.sqrt(var * (1 + rho) / ((1 - rho) * n))
    var_se = var * np.sqrt(2 * (1 + rho**2) / ((1 - rho**2) * n))
    z_mean = (draws.mean((0, 1)) - m) / mean_se
    z_var = (draws.var((0, 1)) - var) / var_se
    return np.concatenate([z_mean, z_var])


@pytest.fixture(scope="module")
def sgld_result(data):
    return run_sgld(sg.SGLD(SGLD_EPS), data)


def test_sgld_matches_its_exact_stationary_law(sgld_result, data):
    draws = sgld_result.samples["mu"]
    assert draws.shape == (SGLD_CHAINS, SGLD_STEPS, 2)
    assert np.max(np.abs(stationary_z(draws, data))) < 4.5


def test_wrong_temperature_is_rejected(data):
    draws = run_sgld(HotSGLD(SGLD_EPS), data).samples["mu"]
    assert np.max(np.abs(stationary_z(draws, data))) > 4.5


@pytest.mark.parametrize(
    "kernel, tol_sd",
    [
        (sg.pSGLD(1e-2), 0.2),
        (sg.SGHMC(3e-3, friction=20.0), 0.2),
        (sg.SGLDCV(2e-4, mode_steps=300), 0.1),
    ],
    ids=["pSGLD", "SGHMC", "SGLDCV"],
)
def test_kernels_match_gaussian_posterior(kernel, tol_sd, data):
    result = sg.sample(
        gaussian_mean,
        kernel,
        4000,
        20,
        4,
        jax.random.PRNGKey(2),
        data,
        num_warmup=1000,
        thinning=2,
        progress_bar=False,
    )
    draws = result.samples["mu"]
    assert draws.shape == (4, 2000, 2)
    m, prec = posterior(data)
    sd = prec**-0.5
    # Mean within 0.25 posterior sd (Monte Carlo error + step bias); sd within the kernel's
    # documented step-size bias.
    assert np.all(np.abs(draws.mean((0, 1)) - m) < 0.25 * sd)
    assert np.all(np.abs(draws.std((0, 1)) / sd - 1) < tol_sd)


def gamma_precision(x):
    tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
    with numpyro.plate("data", x.shape[0]) as idx:
        numpyro.sample("obs", dist.Normal(0.0, tau**-0.5), obs=x[idx])


def test_constrained_latent_uses_the_jacobian():
    x = 0.5 * jax.random.normal(jax.random.PRNGKey(3), (20,))
    a, b = 2.0 + 10, 1.0 + float(jnp.sum(x**2)) / 2
    result = sg.sample(
        gamma_precision,
        sg.SGLD(5e-3),
        20000,
        10,
        4,
        jax.random.PRNGKey(4),
        x,
        num_warmup=1000,
        thinning=5,
        progress_bar=False,
    )
    tau = result.samples["tau"]
    assert tau.shape == (4, 4000)
    # Without the log-Jacobian the mean would be (a - 1) / b, 8% lower.
    assert abs(tau.mean() / (a / b) - 1) < 0.03
    assert abs(tau.std() / (a**0.5 / b) - 1) < 0.1


def test_minibatch_gradient_is_unbiased_with_negative_control(data):
    target = Target(gaussian_mean, (data,), {}, jax.random.PRNGKey(0))
    u = {"mu": jnp.array([0.3, -0.2])}
    # Compiled once rather than traced op by op (each eager op is a compilation of its own).
    exact = jax.jit(lambda: target.grad(u, jnp.arange(N), (data,), {})["mu"])()

    @jax.jit
    def draws(weight):
        def one(key):
            idx = sg.minibatch.minibatch_indices(key, N, 7)
            return target.grad(u, idx, (data,), {}, lik_weight=weight)["mu"]

        return jax.vmap(one)(jax.random.split(jax.random.PRNGKey(5), 8000))

    def estimates(weight):
        g = draws(weight)
        return np.max(np.abs((g.mean(0) - exact) / (g.std(0) / np.sqrt(g.shape[0]))))

    assert estimates(1.0) < 4.5
    # N/(n+1) instead of N/n.
    assert estimates(7 / 8) > 4.5


def test_conducive_gradient_has_zero_mean_over_shard_choice():
    k, d = 5, 3
    key = jax.random.PRNGKey(6)
    means = jax.random.normal(key, (k, d))
    a = jax.random.normal(jax.random.fold_in(key, 1), (k, d, d))
    approx = sg.GaussianApprox(means, a @ jnp.swapaxes(a, 1, 2) + jnp.eye(d))
    probs = jnp.array([0.1, 0.3, 0.2, 0.25, 0.15])
    theta = jax.random.normal(jax.random.fold_in(key, 2), (d,))

    @jax.jit
    def expectation(weights):
        g = jax.vmap(lambda s: sg.conducive_gradient(approx, probs, s, theta))(jnp.arange(k))
        return weights @ g

    assert np.max(np.abs(expectation(probs))) < 1e-12
    # Negative control: shards chosen uniformly while the gradient divides by f_s.
    assert np.max(np.abs(expectation(jnp.full(k, 1 / k)))) > 1e-2


def test_chunking_and_resume_do_not_change_the_draws(tmp_path, data):
    kernel = sg.SGHMC(1e-2, friction=10.0)
    common = dict(num_warmup=30, thinning=3, progress_bar=False)
    key = jax.random.PRNGKey(7)
    whole = sg.sample(gaussian_mean, kernel, 150, 8, 2, key, data, chunk_size=1000, **common)
    path = tmp_path / "ckpt.pkl"
    chunked = sg.sample(
        gaussian_mean, kernel, 150, 8, 2, key, data, chunk_size=30, checkpoint_path=path, **common
    )
    np.testing.assert_allclose(chunked.samples["mu"], whole.samples["mu"], rtol=1e-12)
    assert os.path.exists(path)
    # Chunks shorter than a thinning group are lengthened to one group.
    short = sg.sample(gaussian_mean, kernel, 150, 8, 2, key, data, chunk_size=2, **common)
    np.testing.assert_array_equal(short.samples["mu"], whole.samples["mu"])
    resumed = sg.sample(
        gaussian_mean,
        kernel,
        150,
        8,
        2,
        key,
        data,
        chunk_size=30,
        checkpoint_path=path,
        resume=True,
        **common,
    )
    np.testing.assert_array_equal(resumed.samples["mu"], whole.samples["mu"])


def test_to_inference_data(sgld_result):
    idata = sgld_result.to_inference_data()
    assert idata.posterior["mu"].shape == (SGLD_CHAINS, SGLD_STEPS, 2)
    import arviz as az

    assert float(az.rhat(idata)["mu"].max()) < 1.05


def non_iid_shards(n_per=50):
    """Four shards of 1-D Gaussian data with very different means."""
    centres = jnp.array([-3.0, -1.0, 1.0, 3.0])
    noise = jax.random.normal(jax.random.PRNGKey(8), (4, n_per))
    x = (centres[:, None] + noise).reshape(-1, 1)
    return x, jnp.repeat(jnp.arange(4), n_per)


def gaussian_mean_1d(x):
    mu = numpyro.sample("mu", dist.Normal(jnp.zeros(1), PRIOR_SD).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("obs", dist.Normal(mu, SIGMA).to_event(1), obs=numpyro.subsample(x, 1))


def test_fsgld_removes_dsgld_drift_on_non_iid_shards():
    x, labels = non_iid_shards()
    m, prec = posterior(x)
    sd = prec**-0.5
    out = {}
    for name, cls in [("dsgld", sg.DSGLD), ("fsgld", sg.FSGLD)]:
        kernel = cls(2e-4, shards=labels, local_steps=100)
        r = sg.sample(
            gaussian_mean_1d,
            kernel,
            5000,
            20,
            4,
            jax.random.PRNGKey(9),
            x,
            num_warmup=500,
            thinning=4,
            progress_bar=False,
        )
        out[name] = r.samples["mu"][..., 0]
    # DSGLD follows each shard's posterior for 100 steps: several times over-dispersed.
    assert out["dsgld"].std() > 3 * sd
    assert abs(out["fsgld"].mean() - m[0]) < 0.5 * sd
    assert abs(out["fsgld"].std() / sd - 1) < 0.3


@pytest.mark.parametrize(
    "shards",
    [0, "abc", jnp.zeros(10, jnp.int32), [np.arange(100), np.arange(100)], jnp.ones(200)],
    ids=["zero", "string", "short-labels", "overlap", "float-labels"],
)
def test_unknown_shard_layout(shards, data):
    with pytest.raises(DataError, match="shard layout"):
        sg.sample(
            gaussian_mean,
            sg.DSGLD(1e-3, shards=shards),
            10,
            5,
            1,
            jax.random.PRNGKey(0),
            data,
            progress_bar=False,
        )


def no_plate(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.sample("obs", dist.Normal(mu, 1.0), obs=x)


def not_indexed(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("obs", dist.Normal(mu, 1.0), obs=x)


def local_latent(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("obs", dist.Normal(z, 1.0), obs=numpyro.subsample(x, 0))


@pytest.mark.parametrize(
    "model, batch, match",
    [
        (no_plate, 5, "no data plate"),
        (not_indexed, 5, "not indexed by the plate"),
        (local_latent, 5, "inside the data plate"),
        (gamma_precision, 50, "larger than the data plate"),
    ],
    ids=["no-plate", "not-indexed", "local-latent", "batch-too-large"],
)
def test_bad_models_and_batches(model, batch, match):
    x = jnp.arange(20.0)
    with pytest.raises(DataError, match=match):
        sg.sample(model, sg.SGLD(1e-3), 10, batch, 1, jax.random.PRNGKey(0), x, progress_bar=False)


def test_divergent_chain_is_reported(data):
    # run_sgld's run with a step size far too large: the same compilation as sgld_result's.
    with pytest.raises(
        sg.DivergentChainError, match="chain .* diverged between steps .*smaller step"
    ):
        run_sgld(sg.SGLD(10.0), data)


def test_not_a_kernel(data):
    with pytest.raises(TypeError, match="vigrad.sgmcmc kernel"):
        sg.sample(gaussian_mean, object(), 10, 5, 1, jax.random.PRNGKey(0), data)


def linear_regression(x, y):
    w = numpyro.sample("w", dist.Normal(jnp.zeros(2), 2.0).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        xb = numpyro.subsample(x, event_dim=1)
        numpyro.sample("y", dist.Normal(xb @ w, 1.0), obs=numpyro.subsample(y, event_dim=0))


@pytest.mark.slow
@pytest.mark.parametrize(
    "kernel, tol",
    [
        (sg.SGLD(2e-4), 0.15),
        (sg.pSGLD(5e-3), 0.15),
        (sg.SGHMC(3e-3, friction=20.0), 0.15),
        (sg.SGLDCV(5e-4, mode_steps=1000), 0.06),
    ],
    ids=["SGLD", "pSGLD", "SGHMC", "SGLDCV"],
)
def test_long_chains_match_correlated_gaussian_posterior(kernel, tol):
    """Posterior mean and full covariance of a linear regression with correlated features."""
    key = jax.random.PRNGKey(11)
    z = jax.random.normal(key, (500, 2))
    x = jnp.stack([z[:, 0], 0.8 * z[:, 0] + 0.6 * z[:, 1]], axis=1)
    y = x @ jnp.array([0.5, -1.0]) + jax.random.normal(jax.random.fold_in(key, 1), (500,))
    precision = x.T @ x + jnp.eye(2) / 4.0
    cov = np.asarray(jnp.linalg.inv(precision))
    mean = cov @ np.asarray(x.T @ y)
    result = sg.sample(
        linear_regression,
        kernel,
        200_000,
        50,
        4,
        jax.random.PRNGKey(12),
        x,
        y,
        num_warmup=20_000,
        thinning=20,
        progress_bar=False,
    )
    w = result.samples["w"].reshape(-1, 2)
    sd = np.sqrt(np.diag(cov))
    # Mean within 0.15 posterior sd; covariance entries within ``tol`` relative to sd_i sd_j
    # (documented step-size bias plus Monte Carlo error).
    assert np.all(np.abs(w.mean(0) - mean) < 0.15 * sd)
    assert np.all(np.abs(np.cov(w.T) - cov) / np.outer(sd, sd) < tol)


def test_schedule_and_init_params(data):
    start = {"mu": jnp.array([[0.0, 0.0], [2.0, -2.0]])}
    common = dict(num_warmup=0, progress_bar=False, init_params=start)
    fixed = sg.sample(
        gaussian_mean, sg.SGLD(5e-4), 20, 8, 2, jax.random.PRNGKey(13), data, **common
    )
    schedule = sg.SGLD(sg.polynomial_decay(5e-4, 1.0, 0.0))
    same = sg.sample(gaussian_mean, schedule, 20, 8, 2, jax.random.PRNGKey(13), data, **common)
    np.testing.assert_allclose(same.samples["mu"], fixed.samples["mu"], rtol=1e-12)
    # The first draw is one step away from each chain's own start.
    assert np.all(np.abs(fixed.samples["mu"][:, 0] - np.asarray(start["mu"])) < 0.5)
    with pytest.raises(ValueError, match="init_params"):
        sg.sample(gaussian_mean, sg.SGLD(5e-4), 20, 8, 3, jax.random.PRNGKey(13), data, **common)


@pytest.mark.parametrize(
    "make",
    [
        lambda eps, labels: sg.SGLD(eps),
        lambda eps, labels: sg.DSGLD(eps, shards=labels, local_steps=5),
        lambda eps, labels: sg.FSGLD(eps, shards=labels, local_steps=5),
    ],
    ids=["SGLD", "DSGLD", "FSGLD"],
)
def test_second_run_with_the_same_shapes_compiles_nothing(make, data):
    """New data, shard labels, step size and key of the same shapes reuse every compilation."""
    labels = jnp.repeat(jnp.arange(4), N // 4)

    def run(eps, labels, x, key):
        common = dict(progress_bar=False, check=False)
        sg.sample(gaussian_mean, make(eps, labels), 40, 10, 2, key, x, **common)

    first = count_compilations(lambda: run(1e-3, labels, data, jax.random.PRNGKey(0)))
    assert first > 0
    other_labels, other_data, other_key = labels[::-1], data + 1.0, jax.random.PRNGKey(1)
    second = count_compilations(lambda: run(2e-3, other_labels, other_data, other_key))
    assert second == 0


def test_fsgld_approximations_must_match_shards_and_latents(data):
    wrong = sg.GaussianApprox(jnp.zeros((3, 2)), jnp.stack([jnp.eye(2)] * 3))
    kernel = sg.FSGLD(1e-4, shards=4, approximations=wrong)
    with pytest.raises(DataError, match=r"means of shape \(4, 2\)"):
        sg.sample(gaussian_mean, kernel, 10, 5, 1, jax.random.PRNGKey(0), data, progress_bar=False)
