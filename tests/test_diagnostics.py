"""Diagnostics: PSIS k-hat, InferenceData, gradient statistics and estimator selection.

The conjugate Gaussian model of tests/models.py (mu ~ N(0, 1), x_i ~ N(mu, 1)) has a Gaussian
posterior, a closed-form ELBO and evidence, so the log weights, the gradient mean and the k-hat of
an exact guide are known.
"""

import dataclasses

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.infer.autoguide import AutoDiagonalNormal

import vigrad
from tests.models import conjugate_guide as guide
from tests.models import conjugate_model as model
from tests.models import conjugate_posterior
from vigrad.diagnostics import (
    compare_estimators,
    gradient_variance,
    khat_message,
    plot_comparison,
    psis_khat,
    select_estimators,
    site_khats,
    to_inference_data,
)
from vigrad.diagnostics.gradients import make_objective
from vigrad.diagnostics.psis import draw_with_weights
from vigrad.diagnostics.select import default_candidates, estimator_name

jax.config.update("jax_enable_x64", True)

X = jnp.array([0.5, 1.0, 1.5])
N = X.shape[0]
POST = conjugate_posterior(X)


def exact_elbo(loc, scale, x=X):
    log2pi = jnp.log(2 * jnp.pi)
    prior = -0.5 * log2pi - 0.5 * (loc**2 + scale**2)
    lik = jnp.sum(-0.5 * log2pi - 0.5 * ((x - loc) ** 2 + scale**2))
    entropy = 0.5 * jnp.log(2 * jnp.pi * jnp.e * scale**2)
    return prior + lik + entropy


def exact_loss_grad(params):
    """Gradient of the negative ELBO in the unconstrained parameters (as fit sees them)."""
    to_pos = biject_to(constraints.positive)

    def neg(u):
        return -exact_elbo(u["m"], to_pos(u["s"]))

    u = {"m": jnp.asarray(params["m"]), "s": to_pos.inv(params["s"])}
    return jax.grad(neg)(u)


def log_evidence(x=X):
    cov = jnp.eye(N) + jnp.ones((N, N))
    return dist.MultivariateNormal(jnp.zeros(N), cov).log_prob(x)


def z_scores(stats, exact):
    return np.concatenate(
        [
            np.ravel(
                (stats.mean[n] - np.asarray(exact[n]))
                / np.sqrt(stats.variance[n] / stats.num_samples)
            )
            for n in exact
        ]
    )


@dataclasses.dataclass(frozen=True)
class StoppedLogQ(vigrad.Estimator):
    """Negative control: stops the whole log q term, dropping its dependence on mu (biased)."""

    def sample(self, fn, rng_key, sample_shape):
        return fn.rsample(rng_key, sample_shape)

    def log_q(self, fn, value):
        return jax.lax.stop_gradient(fn.log_prob(value))


# -- PSIS ----------------------------------------------------------------------------------------


def test_log_weights_of_the_exact_guide_are_the_log_evidence():
    draws = draw_with_weights(model, guide, POST, X, num_samples=200, rng_key=jax.random.key(1))
    np.testing.assert_allclose(draws.log_weights, log_evidence(), rtol=0, atol=1e-10)
    assert draws.values["mu"].shape == (200,)
    np.testing.assert_allclose(draws.observed["x"], X)
    assert psis_khat(draws.log_weights) < 0.5
    assert all(k < 0.5 for k in site_khats(draws).values())


def test_khat_small_for_a_close_guide_and_large_for_a_narrow_one():
    key = jax.random.key(0)
    close = {"m": POST["m"] + 0.05, "s": POST["s"] * 1.1}
    # Two posterior sds off and five times too narrow: the weights' tail is far too heavy.
    narrow = {"m": POST["m"] + 1.0, "s": POST["s"] * 0.2}
    good = draw_with_weights(model, guide, close, X, num_samples=2000, rng_key=key)
    bad = draw_with_weights(model, guide, narrow, X, num_samples=2000, rng_key=key)
    assert psis_khat(good.log_weights) < 0.5
    assert psis_khat(bad.log_weights) > 0.7
    assert site_khats(bad)["mu"] > 0.7
    assert khat_message(psis_khat(bad.log_weights)).startswith("bad")


def test_psis_khat_on_known_tails():
    rng = np.random.default_rng(0)
    light = rng.normal(size=4000) * 0.5
    # Weights from a generalised Pareto with shape 0.9: k-hat should find a heavy tail.
    u = rng.uniform(size=4000)
    heavy = np.log(((1 - u) ** -0.9 - 1) / 0.9)
    assert psis_khat(light) < 0.5
    assert psis_khat(heavy) > 0.7
    batched = psis_khat(np.stack([light, heavy]))
    assert batched.shape == (2,) and batched[0] < 0.5 < 0.7 < batched[1]
    assert psis_khat(np.zeros(100)) == -np.inf
    assert psis_khat(np.r_[light[:99], np.nan]) == np.inf
    with pytest.raises(ValueError, match="at least 2 draws"):
        psis_khat(np.zeros(1))


@pytest.mark.parametrize(
    "k, start", [(-np.inf, "good"), (0.2, "good"), (0.5, "ok"), (0.69, "ok"), (0.7, "bad")]
)
def test_khat_message_thresholds(k, start):
    assert khat_message(k).startswith(start)


# -- InferenceData -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted():
    return vigrad.fit(
        model, guide, vigrad.ELBO(), optax.adam(0.05), 200, jax.random.key(3), X, progress_bar=False
    )


def test_inference_data_round_trip_to_netcdf(fitted, tmp_path):
    idata = to_inference_data(
        fitted, model=model, guide=guide, args=(X,), num_samples=300, rng_key=jax.random.key(4)
    )
    assert set(idata.groups()) >= {"posterior", "sample_stats", "observed_data", "loss"}
    z = idata.posterior["mu"].values
    assert z.shape == (4, 75)  # independent draws as four pseudo-chains
    # The draws come from the fitted guide.
    loc, scale = float(fitted.params["m"]), float(fitted.params["s"])
    assert abs(z.mean() - loc) < 5 * scale / np.sqrt(300)
    attrs = idata.posterior.attrs
    assert attrs["psis_khat"] == psis_khat(idata.sample_stats["log_weight"].values.reshape(-1))
    assert attrs["psis_khat_message"] == khat_message(attrs["psis_khat"])
    assert "psis_khat_site_mu" in attrs and attrs["num_steps"] == 200

    path = tmp_path / "fit.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    np.testing.assert_array_equal(back.posterior["mu"].values, z)
    np.testing.assert_array_equal(back.loss["loss"].values, fitted.losses)
    np.testing.assert_array_equal(
        back.sample_stats["log_weight"].values, idata.sample_stats["log_weight"].values
    )
    np.testing.assert_allclose(back.observed_data["x"].values, X)
    assert back.posterior.attrs["psis_khat"] == attrs["psis_khat"]


def test_inference_data_delegates_and_explains(fitted):
    class Samples:
        def to_inference_data(self):
            return "converted"

    assert to_inference_data(Samples()) == "converted"
    with pytest.raises(ValueError, match="needs the model and the guide"):
        to_inference_data(fitted)
    with pytest.raises(TypeError, match="FitResult"):
        to_inference_data(object())


def hier_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("J", y.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, 1.0))
        numpyro.sample("y", dist.Normal(theta, 1.0), obs=y)
    numpyro.deterministic("total", jnp.sum(theta))


def test_inference_data_with_an_autoguide():
    y = jnp.array([1.0, -0.5, 2.0, 0.3])
    guide = AutoDiagonalNormal(hier_model)
    # The guide at its initial parameters, as a fit result (no fit needed to test the conversion).
    tr = numpyro.handlers.trace(numpyro.handlers.seed(guide, 0)).get_trace(y)
    params = {n: s["value"] for n, s in tr.items() if s["type"] == "param"}
    result = vigrad.FitResult(params, {}, np.zeros(3), None, None, 3)
    idata = to_inference_data(result, model=hier_model, guide=guide, args=(y,), num_samples=200)
    # Model sites only: the guide's auxiliary _auto_latent is not a posterior variable.
    assert set(idata.posterior.data_vars) == {"mu", "theta", "total"}
    assert idata.posterior["theta"].shape == (4, 50, 4)
    # Named after the plate, as arviz.from_numpyro names it.
    assert idata.posterior["theta"].dims == ("chain", "draw", "J")
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "J")
    np.testing.assert_allclose(
        idata.posterior["total"].values, idata.posterior["theta"].values.sum(-1), rtol=1e-12
    )
    attrs = idata.posterior.attrs
    # Sites sampled jointly through _auto_latent have no guide factor of their own.
    assert np.isfinite(attrs["psis_khat"]) and not any(
        k.startswith("psis_khat_site_") for k in attrs
    )


# -- Gradient statistics -------------------------------------------------------------------------

OFF = {"m": jnp.asarray(0.2), "s": jnp.asarray(0.8)}


@pytest.mark.parametrize(
    "estimator, unbiased",
    [
        (vigrad.Reparam(), True),
        (vigrad.Score(vigrad.MovingAverage()), True),
        (StoppedLogQ(), False),
    ],
    ids=["Reparam", "Score-MovingAverage", "negative-control"],
)
def test_gradient_mean_matches_the_exact_gradient(estimator, unbiased):
    stats = gradient_variance(
        model,
        guide,
        OFF,
        {"mu": estimator},
        X,
        num_samples=3000,
        rng_key=jax.random.key(5),
    )
    z = z_scores(stats, exact_loss_grad(OFF))
    assert (np.max(np.abs(z)) < 4.5) == unbiased, z
    assert stats.seconds > 0 and set(stats.snr) == {"m", "s"}


@pytest.fixture(scope="module")
def selection():
    return select_estimators(
        model, guide, POST, X, num_samples=300, rng_key=jax.random.key(6), timing_rounds=2
    )


def test_variance_ordering_at_the_posterior(selection):
    rows = {r.name: r for r in selection.comparison.for_site("mu")}
    assert set(rows) == {"Reparam", "PathGradient", "Score", "Score(MovingAverage)"}
    assert all(r.usable for r in rows.values())
    assert rows["PathGradient"].variance < 1e-20
    assert rows["PathGradient"].variance < rows["Reparam"].variance < rows["Score"].variance
    assert rows["Reparam"].parameters == ("m", "s")


def test_select_picks_path_gradient_at_the_posterior(selection, tmp_path):
    estimators, report = selection
    assert estimators == {"mu": vigrad.PathGradient()}
    assert report.splitlines()[1].startswith("mu: PathGradient")
    table = str(selection.comparison)
    line = next(ln for ln in table.splitlines() if "PathGradient" in ln)
    assert line.endswith("*")
    fig_path = tmp_path / "comparison.png"
    plot_comparison(selection.comparison, fig_path)
    assert fig_path.read_bytes()[:4] == b"\x89PNG"


def mixture_model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("n", x.shape[0]):
        c = numpyro.sample("c", dist.Bernoulli(logits=mu))
        numpyro.sample("x", dist.Normal(2.0 * c - 1.0, 1.0), obs=x)


def mixture_guide(x):
    loc = numpyro.param("loc", 0.0)
    scale = numpyro.param("scale", 1.0, constraint=constraints.positive)
    numpyro.sample("mu", dist.Normal(loc, scale))
    probs = numpyro.param("probs", jnp.full(x.shape, 0.5), constraint=constraints.unit_interval)
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("c", dist.Bernoulli(probs))


def test_select_never_picks_an_estimator_that_cannot_serve_the_site():
    params = {"loc": 0.3, "scale": 0.7, "probs": jnp.array([0.3, 0.6, 0.8])}
    candidates = {
        "c": [vigrad.Reparam(), vigrad.PathGradient(), vigrad.Enumerate(), vigrad.Score()],
        # Leave-one-out needs two particles; with one it fails when traced, not in check().
        "mu": [vigrad.Score(vigrad.LeaveOneOut()), vigrad.Reparam()],
    }
    estimators, report = select_estimators(
        mixture_model,
        mixture_guide,
        params,
        X,
        candidates=candidates,
        num_samples=200,
        rng_key=jax.random.key(7),
        timing_rounds=1,
    )
    assert estimators == {"c": vigrad.Enumerate(), "mu": vigrad.Reparam()}
    assert "Reparam: cannot serve it (Reparam() cannot serve site 'c'" in report
    assert "Score(LeaveOneOut): cannot serve it" in report and "2 particles" in report


def test_compare_rejects_unknown_sites():
    with pytest.raises(vigrad.VigradError, match="not sampled sites of the guide"):
        compare_estimators(model, guide, POST, X, candidates={"w": [vigrad.Reparam()]})


@dataclasses.dataclass(frozen=True)
class Broken(vigrad.Estimator):
    """An estimator whose sampler fails: its row records the error, the others still count."""

    def sample(self, fn, rng_key, sample_shape):
        raise RuntimeError("sampler exploded")


def test_a_failing_candidate_is_reported_not_chosen():
    selection = select_estimators(
        model,
        guide,
        OFF,
        X,
        candidates={"mu": [Broken(), vigrad.Reparam()]},
        num_samples=50,
        timing_rounds=0,
    )
    assert selection.estimators == {"mu": vigrad.Reparam()}
    broken = selection.comparison.for_site("mu")[0]
    assert broken.failed and not broken.usable and "sampler exploded" in broken.reason
    assert "error: RuntimeError: sampler exploded" in str(selection.comparison)


def test_default_candidates():
    names = lambda ests: [estimator_name(e) for e in ests]
    normal, bernoulli = dist.Normal(0.0, 1.0), dist.Bernoulli(0.5)
    assert names(default_candidates(normal)) == [
        "Reparam",
        "PathGradient",
        "Score",
        "Score(MovingAverage)",
    ]
    assert names(default_candidates(bernoulli, 4)) == [
        "Enumerate",
        "Score(LeaveOneOut)",
        "Score(MovingAverage)",
    ]
    # Inside multi-sample objectives the plain path gradient is biased and enumeration undefined.
    assert names(default_candidates(normal, 4, expected_log_weight=False)) == [
        "Reparam",
        "Score",
        "Score(MovingAverage)",
    ]


def test_gradient_in_constrained_parameters():
    stats = gradient_variance(
        model,
        guide,
        OFF,
        {"mu": vigrad.Reparam()},
        X,
        num_samples=2000,
        rng_key=jax.random.key(9),
        unconstrained=False,
    )
    exact = jax.grad(lambda p: -exact_elbo(p["m"], p["s"]))(OFF)
    assert np.max(np.abs(z_scores(stats, exact))) < 4.5
    # d/d scale differs from d/d log(scale) by the factor scale: the two are not confused.
    assert abs(float(exact["s"]) - float(exact_loss_grad(OFF)["s"])) > 0.1


def test_an_objective_instance_keeps_its_settings():
    original = vigrad.IWELBO(4, estimators={"a": vigrad.Score()})
    obj = make_objective(original, 1, {"z": vigrad.PathGradient()})
    assert isinstance(obj, vigrad.IWELBO) and obj.num_particles == 4
    assert obj.assignment.by_name == {"a": vigrad.Score(), "z": vigrad.PathGradient()}
    assert original.assignment.by_name == {"a": vigrad.Score()}
    assert type(make_objective(vigrad.RenyiELBO, 3, None)) is vigrad.RenyiELBO
    assert make_objective(None, 3, None).num_particles == 3


@pytest.mark.slow
@pytest.mark.parametrize("num_particles", [1, 4])
def test_every_default_candidate_is_unbiased_at_scale(num_particles):
    """All default candidates, 20000 estimates each, off the posterior: max |z| < 4.5."""
    for estimator in default_candidates(dist.Normal(0.0, 1.0), num_particles):
        stats = gradient_variance(
            model,
            guide,
            OFF,
            {"mu": estimator},
            X,
            num_particles=num_particles,
            num_samples=20000,
            rng_key=jax.random.key(10),
        )
        z = z_scores(stats, exact_loss_grad(OFF))
        assert np.max(np.abs(z)) < 4.5, (estimator_name(estimator), z)


def fixed_guide(x):
    m = numpyro.param("m", 0.0)
    s = numpyro.param("s", 1.0, constraint=constraints.positive)
    numpyro.sample("mu", dist.Normal(m, s), infer={"estimator": vigrad.Score()})


def test_an_estimator_set_in_the_guide_is_the_only_one_measured():
    comparison = compare_estimators(model, fixed_guide, OFF, X, num_samples=50, timing_rounds=0)
    (row,) = comparison.rows
    assert row.name == "Score (set in guide)" and row.usable and row.variance > 0
    assert comparison.select().estimators == {"mu": vigrad.Score()}


def test_rws_wake_score_is_measured_as_it_draws():
    """RWS(wake="score") draws every site with fixed samples whatever the estimators: the
    comparison measures that one way (not Reparam on a Normal site), and asking for another
    estimator is an error rather than a row that does not measure what it says."""
    rws = vigrad.RWS(num_particles=2, wake="score")
    comparison = compare_estimators(
        model, guide, OFF, X, objective=rws, num_samples=20, warmup=0, timing_rounds=0
    )
    (row,) = comparison.rows
    assert row.name == "Score (set by RWS)" and row.usable
    with pytest.raises(vigrad.EstimatorError, match=r"RWS: .*draws every guide site as Score"):
        gradient_variance(model, guide, OFF, {"mu": vigrad.Reparam()}, X, objective=rws)


def test_candidates_are_keyword_only_in_compare_and_select():
    for compare_or_select in (compare_estimators, select_estimators):
        with pytest.raises(TypeError, match=r"candidates is keyword-only.*candidates=\{"):
            compare_or_select(model, guide, OFF, {"mu": [vigrad.Reparam()]}, X)
