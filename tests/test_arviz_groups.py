"""InferenceData of VI and SG-MCMC results as arviz.from_numpyro lays it out: plate dims, a
pointwise log_likelihood group (az.loo, az.waic, az.compare), sample_stats, no ArviZ warnings."""

import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer.autoguide import AutoNormal

import vigrad
import vigrad.sgmcmc as sg

GROUP = jnp.repeat(jnp.arange(3), 40)
Y = jnp.array([-1.0, 0.0, 1.5])[GROUP] + jax.random.normal(jax.random.PRNGKey(0), (120,))


def groups_model(y, group):
    mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
    with numpyro.plate("groups", 3):
        theta = numpyro.sample("theta", dist.Normal(mu, 2.0))
    with numpyro.plate("data", y.shape[0]):
        g = numpyro.subsample(group, event_dim=0)
        numpyro.sample("y", dist.Normal(theta[g], 1.0), obs=numpyro.subsample(y, event_dim=0))


@pytest.fixture(scope="module")
def vi_idata():
    guide = AutoNormal(groups_model)
    result = vigrad.fit(
        groups_model,
        guide,
        vigrad.ELBO(),
        optax.adam(0.05),
        600,
        jax.random.key(0),
        Y,
        GROUP,
        progress_bar=False,
    )
    return vigrad.to_inference_data(
        result, model=groups_model, guide=guide, args=(Y, GROUP), num_samples=400
    )


@pytest.fixture(scope="module")
def sg_result():
    return sg.sample(
        groups_model,
        sg.SGLD(2e-3),
        2000,
        40,
        4,
        jax.random.PRNGKey(1),
        Y,
        GROUP,
        num_warmup=500,
        thinning=4,
        progress_bar=False,
        check=False,
    )


def test_vi_dims_follow_plates_and_user_dims(vi_idata):
    assert vi_idata.posterior["theta"].dims == ("chain", "draw", "groups")
    assert vi_idata.log_likelihood["y"].dims == ("chain", "draw", "data")
    assert vi_idata.log_likelihood["y"].shape == (4, 100, 120)
    np.testing.assert_array_equal(vi_idata.posterior["groups"].values, np.arange(3))


def test_vi_summary_and_loo_do_not_warn(vi_idata):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = az.summary(vi_idata, var_names=["mu", "theta"])
        loo = az.loo(vi_idata)
        az.waic(vi_idata)
    assert np.isfinite(summary["r_hat"]).all()
    assert np.isfinite(loo.elpd_loo) and loo.n_data_points == 120


def test_sgmcmc_groups(sg_result, tmp_path):
    idata = sg_result.to_inference_data(coords={"groups": ["a", "b", "c"]})
    assert idata.posterior["theta"].dims == ("chain", "draw", "groups")
    assert list(idata.posterior["groups"].values) == ["a", "b", "c"]
    assert idata.log_likelihood["y"].shape == (4, 500, 120)
    np.testing.assert_allclose(idata.sample_stats["step_size"].values, 2e-3)
    assert not idata.sample_stats["diverging"].values.any()
    np.testing.assert_array_equal(idata.observed_data["y"].values, Y)
    # The netCDF file holds every group, not the posterior only.
    idata.to_netcdf(str(tmp_path / "s.nc"))
    back = az.from_netcdf(str(tmp_path / "s.nc"))
    assert {"posterior", "sample_stats", "log_likelihood", "observed_data"} <= set(back.groups())


def test_compare_a_vi_and_an_sgmcmc_result(vi_idata, sg_result):
    table = az.compare({"vi": vi_idata, "sgld": sg_result.to_inference_data()})
    assert set(table.index) == {"vi", "sgld"}
    # Same model and data: their expected log predictive densities agree within their errors.
    assert abs(table["elpd_loo"].iloc[0] - table["elpd_loo"].iloc[1]) < 3 * table["dse"].max() + 1
