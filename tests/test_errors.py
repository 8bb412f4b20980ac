"""Bad input gets a clear error naming the site and the fix, raised before compilation."""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import vigrad

X = jnp.array([0.5, 1.2, -0.3])
PARAMS = {"m": jnp.array(0.0), "p": jnp.array(0.3)}


def model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    k = numpyro.sample("k", dist.Bernoulli(0.5))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(mu + k, 1.0), obs=x)


def guide(x):
    numpyro.sample("mu", dist.Normal(numpyro.param("m", 0.0), 1.0))
    numpyro.sample("k", dist.Bernoulli(numpyro.param("p", 0.3)))


def loss_of(objective, m=model, g=guide, x=X):
    return objective.loss(jax.random.key(0), PARAMS, m, g, x)


@pytest.mark.parametrize("estimator", [vigrad.Reparam(), vigrad.PathGradient()])
def test_pathwise_estimator_on_discrete_site(estimator):
    with pytest.raises(vigrad.EstimatorError, match=r"cannot serve site 'k'.*vigrad.Score"):
        loss_of(vigrad.ELBO(estimators={"k": estimator}))


def test_pathwise_estimator_on_discrete_site_in_guide_infer():
    def guide_infer(x):
        numpyro.sample("mu", dist.Normal(numpyro.param("m", 0.0), 1.0))
        p = numpyro.param("p", 0.3)
        numpyro.sample("k", dist.Bernoulli(p), infer={"estimator": vigrad.Reparam()})

    with pytest.raises(vigrad.EstimatorError, match="site 'k'"):
        loss_of(vigrad.ELBO(), g=guide_infer)


def test_estimator_for_unknown_site():
    with pytest.raises(
        vigrad.EstimatorError, match=r"site 'nu'.*Guide sample sites: \['k', 'mu'\]"
    ):
        loss_of(vigrad.ELBO(estimators={"nu": vigrad.Score()}))


def test_estimator_that_is_not_an_estimator():
    with pytest.raises(vigrad.EstimatorError, match=r"estimators\['mu'\].*instance"):
        vigrad.ELBO(estimators={"mu": vigrad.PathGradient})
    with pytest.raises(vigrad.EstimatorError, match="site 'mu'"):
        loss_of(vigrad.ELBO(estimators=lambda site: "reparam"))


def test_guide_missing_a_latent_site():
    def partial_guide(x):
        numpyro.sample("mu", dist.Normal(numpyro.param("m", 0.0), 1.0))

    with pytest.raises(
        vigrad.ModelGuideMismatchError, match=r"latent site 'k'.*numpyro.sample\('k'"
    ):
        loss_of(vigrad.ELBO(), g=partial_guide)


def test_shape_mismatch_between_model_and_guide():
    def wide_guide(x):
        numpyro.sample("mu", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
        numpyro.sample("k", dist.Bernoulli(0.3))

    with pytest.raises(
        vigrad.ModelGuideMismatchError, match=r"Site 'mu' has shape \(2,\).*expects \(\)"
    ):
        loss_of(vigrad.ELBO(), g=wide_guide)


def test_nan_in_observed_data():
    bad = X.at[1].set(jnp.nan)
    with pytest.raises(vigrad.DataError, match="Observed site 'x'"):
        loss_of(vigrad.ELBO(), x=bad)
    with pytest.raises(vigrad.DataError, match="Observed site 'x'.*mask"):
        vigrad.fit(model, guide, vigrad.ELBO(), optax.adam(0.1), 10, jax.random.key(0), bad)


def test_leave_one_out_needs_two_particles():
    with pytest.raises(vigrad.EstimatorError, match="at least 2 particles"):
        loss_of(vigrad.ELBO(estimators={"k": vigrad.Score(vigrad.LeaveOneOut())}))


def test_estimator_assigned_to_autoguide_delta_site():
    from numpyro.infer.autoguide import AutoDiagonalNormal

    def cont_model(x):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    auto = AutoDiagonalNormal(cont_model)
    objective = vigrad.ELBO(estimators={"mu": vigrad.PathGradient()})
    with pytest.raises(vigrad.EstimatorError, match=r"'mu'.*Delta.*\['_auto_latent'\]"):
        vigrad.fit(cont_model, auto, objective, optax.adam(0.1), 5, jax.random.key(0), 0.5)
