"""Convergence check, kernel Stein discrepancy and step-size selection of the SG-MCMC driver."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import vigrad.sgmcmc as sg

jax.config.update("jax_enable_x64", True)

GRID = 10.0 ** np.arange(-7.0, 0.01, 1.0)


def gaussian_mean(x):
    mu = numpyro.sample("mu", dist.Normal(jnp.zeros(2), 3.0).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("obs", dist.Normal(mu, 1.0).to_event(1), obs=numpyro.subsample(x, 1))


def gaussian_scale(x):
    """A constrained latent: sampled through log, with the Jacobian."""
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("obs", dist.Normal(0.0, sigma), obs=numpyro.subsample(x, 0))


def logistic(x, y):
    w = numpyro.sample("w", dist.Normal(jnp.zeros(x.shape[1]), 1.0).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        logits = numpyro.subsample(x, 1) @ w
        numpyro.sample("y", dist.Bernoulli(logits=logits), obs=numpyro.subsample(y, 0))


def _logistic_data():
    kx, ky = jax.random.split(jax.random.PRNGKey(3))
    x = jax.random.normal(kx, (300, 3))
    y = jax.random.bernoulli(ky, jax.nn.sigmoid(x @ jnp.array([1.0, -1.0, 0.5]))).astype(float)
    return {"x": x, "y": y}


MODELS = {
    "gaussian_mean": (
        gaussian_mean,
        lambda: {"x": jax.random.normal(jax.random.PRNGKey(0), (200, 2)) + 1.0},
    ),
    "gaussian_scale": (
        gaussian_scale,
        lambda: {"x": 2.0 * jax.random.normal(jax.random.PRNGKey(1), (200,))},
    ),
    "logistic": (logistic, _logistic_data),
}


def test_check_convergence_passes_iid_and_flags_disagreeing_chains():
    rng = np.random.default_rng(0)
    good = sg.check_convergence({"a": rng.normal(size=(4, 500, 3)), "fixed": np.ones((4, 500))})
    assert good.ok and good.max_rhat < 1.01 and good.min_ess_bulk > 400
    assert good.message.startswith("converged")
    shifted = rng.normal(size=(4, 500)) + np.arange(4)[:, None]
    bad = sg.check_convergence({"a": rng.normal(size=(4, 500, 3)), "b": shifted})
    assert not bad.ok and bad.worst == "b" and bad.max_rhat > 1.5
    assert "NOT CONVERGED" in bad.message and "R-hat" in bad.message and "fix:" in bad.message
    stuck = np.cumsum(rng.normal(size=(4, 500)), axis=1)  # random walks: tiny ESS
    assert "ESS too small" in sg.check_convergence({"s": stuck}).message


def test_check_convergence_with_one_chain_says_rhat_was_not_checked():
    one = sg.check_convergence({"a": np.random.default_rng(1).normal(size=(1, 2000))})
    assert one.ok and np.isnan(one.max_rhat)
    assert "R-hat not checked with one chain" in one.message


def test_sample_warns_and_records_when_not_converged():
    model, data = MODELS["gaussian_mean"]
    # The run's shape is test_selected_step_size_converges's (only the step size differs), so the
    # two share one compilation.
    with pytest.warns(sg.ConvergenceWarning, match="NOT CONVERGED.*run longer: about num_samples="):
        result = sg.sample(
            model,
            sg.SGLD(1e-7),
            4000,
            32,
            4,
            jax.random.PRNGKey(0),
            num_warmup=500,
            thinning=4,
            progress_bar=False,
            **data(),
        )
    assert not result.convergence.ok and result.convergence.max_rhat > 1.5
    # Chains still at their random starts: the advice also raises separate regions (modes).
    assert "chains sitting in different regions" in result.convergence.message


def test_imq_ksd_is_smallest_for_the_target():
    """Draws from N(0, I) scored under N(0, I), against draws shifted or too narrow."""
    x = jax.random.normal(jax.random.PRNGKey(0), (400, 3))
    # Compiled once for the four calls of the same shapes, rather than traced op by op.
    ksd = jax.jit(sg.imq_ksd)
    right = float(ksd(x, -x))
    assert right < 0.5 * float(ksd(x + 0.5, -(x + 0.5)))
    assert right < 0.5 * float(ksd(0.3 * x, -0.3 * x))
    assert float(ksd(x.at[0, 0].set(jnp.nan), -x)) == np.inf


@pytest.fixture(scope="module", params=sorted(MODELS))
def selected(request):
    model, make = MODELS[request.param]
    data = make()
    sel = sg.select_step_size(
        model,
        sg.SGLD(1.0),
        32,
        jax.random.PRNGKey(0),
        step_sizes=GRID,
        num_steps=400,
        num_draws=50,
        **data,
    )
    return request.param, model, data, sel


def test_selected_step_size_is_inside_the_grid_and_beats_its_neighbours(selected):
    _, _, _, sel = selected
    i = int(np.argmin(sel.ksd))
    assert 0 < i < len(GRID) - 1, sel.message
    assert sel.step_size == GRID[i] and sel.kernel.step_size == GRID[i]
    # Too small never leaves the start; too large diverges or is far too wide.
    assert sel.ksd[0] > 3 * sel.ksd[i] and sel.ksd[-1] > 3 * sel.ksd[i]
    assert "warning" not in sel.message


def test_selected_step_size_converges(selected):
    name, model, data, sel = selected
    result = sg.sample(
        model,
        sel.kernel,
        4000,
        32,
        4,
        jax.random.PRNGKey(1),
        num_warmup=500,
        thinning=4,
        progress_bar=False,
        **data,
    )
    assert result.convergence.max_rhat <= 1.05, (name, result.convergence.message)


def test_selection_at_the_grid_end_warns():
    # A grid of the fixture's length and pilot size (so its compiled pilot is reused) that stops
    # at 1e-4, where 400 steps barely reach the posterior: the largest step size is the best.
    model, make = MODELS["gaussian_mean"]
    sel = sg.select_step_size(
        model,
        sg.SGLD(1.0),
        32,
        jax.random.PRNGKey(0),
        step_sizes=GRID * 1e-4,
        num_steps=400,
        num_draws=50,
        **make(),
    )
    assert sel.step_size == GRID[-1] * 1e-4
    assert "largest step size tried, widen step_sizes" in sel.message


SMALL_MODEL = """
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

DATA_PLATE = "data"


def load_data():
    return {"x": jax.random.normal(jax.random.PRNGKey(0), (100,)) + 1.0}


def model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("obs", dist.Normal(mu, 1.0), obs=numpyro.subsample(x, 0))


guide = None
"""


def test_cli_sample_chooses_the_step_size_and_reports_convergence(tmp_path, capsys):
    from vigrad.cli import main

    src = tmp_path / "small.py"
    src.write_text(SMALL_MODEL)
    argv = ["sample", str(src), "--batch-size", "20"]
    assert main([*argv, "--no-progress", "--out", str(tmp_path / "o")]) == 0
    text = capsys.readouterr().out
    assert "chosen by the kernel Stein discrepancy" in text
    assert "Convergence (every element of every site): converged" in text


def correlated(x, y):
    """Logistic regression on nearly collinear features: a long, thin posterior."""
    w = numpyro.sample("w", dist.Normal(jnp.zeros(2), 3.0).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        logits = numpyro.subsample(x, 1) @ w
        numpyro.sample("y", dist.Bernoulli(logits=logits), obs=numpyro.subsample(y, 0))


def test_preconditioned_sgldcv_mixes_where_sgld_does_not():
    kz, ke, ky = jax.random.split(jax.random.PRNGKey(5), 3)
    z = jax.random.normal(kz, (400,))
    x = jnp.stack([z, z + 0.05 * jax.random.normal(ke, (400,))], 1)
    y = jax.random.bernoulli(ky, jax.nn.sigmoid(x @ jnp.array([1.0, 1.0]))).astype(float)
    runs = {}
    for name, kernel in [("sgld", sg.SGLD(1.0)), ("pre", sg.PreconditionedSGLDCV(1.0))]:
        sel = sg.select_step_size(
            correlated,
            kernel,
            32,
            jax.random.PRNGKey(0),
            x=x,
            y=y,
            step_sizes=GRID,
            num_steps=400,
            num_draws=50,
        )
        runs[name] = sg.sample(
            correlated,
            sel.kernel,
            4000,
            32,
            4,
            jax.random.PRNGKey(1),
            x=x,
            y=y,
            num_warmup=200,
            progress_bar=False,
        )
    pre, plain = runs["pre"].convergence, runs["sgld"].convergence
    assert pre.max_rhat <= 1.05 and pre.min_ess_bulk > 3 * plain.min_ess_bulk, (pre, plain)
    assert not plain.ok
    assert "PreconditionedSGLDCV" in runs["sgld"].convergence.message
