"""The tracing helper (vigrad.traces): sites by kind, the model replayed on the guide, and
abstract traces that compute nothing."""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from vigrad.traces import trace_model_and_guide, trace_program, values

X = jnp.array([0.5, 1.0, 1.5])


def model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    numpyro.deterministic("twice", 2.0 * mu)
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def guide(x):
    loc = numpyro.param("loc", 0.1)
    scale = numpyro.param("scale", 1.0, constraint=constraints.positive)
    numpyro.sample("mu_base", dist.Normal(loc, scale))
    numpyro.sample("mu", dist.Delta(numpyro.sample("unused", dist.Normal(0.0, 1.0))))


def test_sites_by_kind_with_the_model_replayed_on_the_guide():
    traced = trace_model_and_guide(model, guide, (X,), params={"loc": 3.0}, guide_key=1)
    assert list(traced.guide.params) == ["loc", "scale"]
    assert list(traced.guide.latent) == ["mu_base", "unused", "mu"]
    assert list(traced.guide.sampled) == ["mu_base", "unused"]
    assert values(traced.guide.params)["loc"] == 3.0
    assert list(traced.model.latent) == ["mu"] and list(traced.model.observed) == ["x"]
    assert list(traced.model.plates) == ["n"] and list(traced.model.deterministic) == ["twice"]
    assert traced.model.latent["mu"]["value"] == traced.guide.latent["mu"]["value"]
    assert set(traced.model.samples) == {"mu", "x"}


def test_abstract_traces_and_substituted_latents():
    traced = trace_model_and_guide(model, guide, (X,), params={"loc": 3.0}, abstract=True)
    assert isinstance(
        traced.guide.latent["mu_base"]["value"], jax.ShapeDtypeStruct | jax.core.Tracer
    )
    assert traced.guide.params["scale"]["kwargs"]["constraint"] is constraints.positive
    sites = trace_program(model, (X,), data={"mu": jnp.array(0.25)})
    assert float(sites.latent["mu"]["value"]) == 0.25
