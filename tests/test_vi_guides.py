"""Diagnostics that depend on the guide and objective: point masses, the Laplace posterior and
the k-hat advice."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from numpyro.infer.autoguide import (
    AutoDelta,
    AutoLaplaceApproximation,
    AutoMultivariateNormal,
    AutoNormal,
)

import vigrad
from tests.models import conjugate_guide, conjugate_model, conjugate_posterior
from vigrad.diagnostics import khat_message

X = jnp.array([0.3, 1.1, -0.4, 0.9, 1.6, 0.2, 0.8, 1.3])
# The Laplace approximation of the conjugate posterior is exact.
POST_MEAN, POST_SD = (float(v) for v in conjugate_posterior(X).values())


def fit_idata(guide):
    result = vigrad.fit(
        conjugate_model,
        guide,
        vigrad.ELBO(),
        optax.adam(0.05),
        400,
        jax.random.key(0),
        X,
        progress_bar=False,
    )
    return vigrad.to_inference_data(
        result, model=conjugate_model, guide=guide, args=(X,), num_samples=400
    )


@pytest.fixture(scope="module")
def point_mass_idata():
    return fit_idata(AutoDelta(conjugate_model))


def test_point_mass_guide_has_no_khat(point_mass_idata):
    attrs = point_mass_idata.posterior.attrs
    assert np.isnan(attrs["psis_khat"]) and attrs["guide"] == "AutoDelta"
    assert attrs["psis_khat_message"].startswith("does not apply: the guide is a point mass")


def test_laplace_guide_exports_its_gaussian_posterior():
    idata = fit_idata(AutoLaplaceApproximation(conjugate_model))
    z = idata.posterior["mu"].values.reshape(-1)
    # Not the MAP point repeated: the Gaussian N(mode, H^-1), here the exact posterior.
    assert abs(z.std() / POST_SD - 1) < 0.15 and abs(z.mean() - POST_MEAN) < 0.2 * POST_SD
    assert idata.posterior.attrs["psis_khat"] < 0.5


@pytest.mark.parametrize(
    "guide, objective, wanted, unwanted",
    [
        (
            AutoNormal(conjugate_model),
            vigrad.ELBO(),
            ["full-rank guide", "mass-covering objective"],
            ["more particles for"],
        ),
        (
            AutoMultivariateNormal(conjugate_model),
            vigrad.IWELBO(num_particles=8),
            ["flow guide", "more particles for IWELBO (now 8)"],
            ["full-rank guide", "mass-covering"],
        ),
        (
            AutoLaplaceApproximation(conjugate_model),
            None,
            ["instead of the Laplace approximation"],
            ["full-rank guide"],
        ),
    ],
)
def test_khat_advice_depends_on_guide_and_objective(guide, objective, wanted, unwanted):
    for k in (0.6, 0.9):
        text = khat_message(k, guide, objective)
        assert all(w in text for w in wanted), text
        assert not any(u in text for u in unwanted), text


def test_psis_summary_corrects_a_misplaced_guide():
    from vigrad.diagnostics import psis_summary

    # A guide 0.4 sd off and 10% too narrow; k-hat stays below 0.7, so reweighting applies.
    params = {"m": jnp.asarray(POST_MEAN + 0.4 * POST_SD), "s": jnp.asarray(0.9 * POST_SD)}
    result = vigrad.FitResult(params, {}, np.zeros(3), None, None, 3)
    idata = vigrad.to_inference_data(
        result, model=conjugate_model, guide=conjugate_guide, args=(X,), num_samples=4000
    )
    table = psis_summary(idata)
    assert table.attrs["khat"] < 0.7
    row = table.loc["mu"]
    assert abs(row["psis_mean"] - POST_MEAN) < 0.5 * abs(row["mean"] - POST_MEAN)
    assert abs(row["psis_sd"] / POST_SD - 1) < 0.5 * abs(row["sd"] / POST_SD - 1)


def test_psis_summary_is_withheld_for_a_point_mass(point_mass_idata):
    from vigrad.diagnostics import psis_summary

    table = psis_summary(point_mass_idata)
    assert np.isnan(table["psis_mean"]).all() and np.isfinite(table["mean"]).all()
