"""Enumerate: exact sums over finite-support sites in the ELBO, against exact gradients."""

import dataclasses

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from test_estimators_unbiased import CASES, M, case_params, exact_gradient
from unbiased import THRESHOLD, gradient_samples, max_abs_z, tree_allclose

import vigrad
from vigrad.errors import EstimatorError


def gradients(case, estimators, num_particles=1, seed=0, num_samples=M):
    model, guide, args, _, _ = CASES[case]
    loss = vigrad.ELBO(num_particles=num_particles, estimators=estimators)
    fn = lambda key, p: loss.loss(key, p, model, guide, *args)
    grads = gradient_samples(fn, case_params(case), jax.random.key(seed), num_samples)
    return grads, exact_gradient(case)


def test_enumerating_every_discrete_site_gives_the_exact_gradient():
    # Categorical k and a plate of Bernoulli z: all sums exact, so every estimate is the gradient.
    grads, exact = gradients("disc", {"k": vigrad.Enumerate(), "z": vigrad.Enumerate()}, 2, 0, 4)
    for i in range(4):
        one = jax.tree.map(lambda g, i=i: g[i], grads)
        assert tree_allclose(one, exact, rtol=1e-9, atol=1e-12)


def test_enumerate_one_site_score_on_the_other_is_unbiased():
    grads, exact = gradients("disc", {"k": vigrad.Enumerate(), "z": vigrad.Score()}, 3)
    assert max_abs_z(grads["a"], exact["a"]) < THRESHOLD
    # k's parameters only see the exact sum: every estimate is their exact gradient.
    assert bool(jnp.allclose(grads["b"], exact["b"], rtol=1e-9, atol=1e-12))


def test_enumerate_after_a_reparameterised_site_is_unbiased():
    # z's guide depends on the reparameterised mu: enumerated per branch, mu's path stays.
    grads, exact = gradients("mix", {"z": vigrad.Enumerate()})
    assert max_abs_z(grads, exact) < THRESHOLD


@dataclasses.dataclass(frozen=True)
class _PartialSupport(vigrad.Enumerate):
    """Negative control: forgets the last support value."""

    @staticmethod
    def num_branches(fn):
        return int(fn.enumerate_support(expand=False).shape[0]) - 1


def test_negative_control_partial_enumeration_is_rejected():
    grads, exact = gradients("mix", {"z": _PartialSupport()}, num_samples=2000)
    assert max_abs_z(grads, exact) > THRESHOLD


def _gauss_site_model():
    numpyro.sample("mu", dist.Normal(0.0, 1.0))


def _gauss_site_guide():
    numpyro.sample("mu", dist.Normal(0.0, 1.0))


def _loss(model, guide, estimators, objective=vigrad.ELBO, *args):
    """The loss traced, not run: refusals are raised while tracing, before anything compiles."""
    loss = objective(num_particles=2, estimators=estimators).loss
    return jax.eval_shape(lambda key: loss(key, {}, model, guide, *args), jax.random.key(0))


def test_enumerate_on_a_continuous_site_is_an_error():
    with pytest.raises(EstimatorError, match="Enumerate\\(\\) cannot serve site 'mu'"):
        _loss(_gauss_site_model, _gauss_site_guide, {"mu": vigrad.Enumerate()})


def test_enumerate_in_a_multi_sample_objective_is_an_error():
    model, guide, args, *_ = CASES["disc"]
    with pytest.raises(EstimatorError, match="Use vigrad.ELBO"):
        _loss(model, guide, {"k": vigrad.Enumerate()}, vigrad.IWELBO, *args)


def _coupled_model():
    a = numpyro.sample("a", dist.Bernoulli(0.5))
    b = numpyro.sample("b", dist.Bernoulli(0.5))
    numpyro.sample("x", dist.Normal(a + b, 1.0), obs=0.3)


def _coupled_guide():
    numpyro.sample("a", dist.Bernoulli(0.5))
    numpyro.sample("b", dist.Bernoulli(0.5))


def test_enumerated_site_sharing_a_term_with_a_score_site_is_an_error():
    with pytest.raises(EstimatorError, match="site 'x' also depends on \\['b'\\]"):
        _loss(_coupled_model, _coupled_guide, {"a": vigrad.Enumerate()})


def _unplated_model():
    z = numpyro.sample("z", dist.Bernoulli(0.5 * jnp.ones(3)))
    numpyro.sample("x", dist.Normal(z.sum(), 1.0), obs=0.3)


def _unplated_guide():
    numpyro.sample("z", dist.Bernoulli(0.5 * jnp.ones(3)))


def test_enumerated_batch_dimension_outside_a_plate_is_an_error():
    with pytest.raises(EstimatorError, match="not a numpyro.plate"):
        _loss(_unplated_model, _unplated_guide, {"z": vigrad.Enumerate()})


def test_fit_a_mixture_with_enumerated_assignments():
    x = jnp.array([-2.1, -1.8, -2.3, 2.2, 1.9, 2.4])

    def model(x):
        locs = numpyro.sample("locs", dist.Normal(jnp.array([-1.0, 1.0]), 3.0).to_event(1))
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Categorical(probs=jnp.array([0.5, 0.5])))
            numpyro.sample("x", dist.Normal(locs[z], 0.5), obs=x)

    def guide(x):
        m = numpyro.param("m", jnp.array([-0.5, 0.5]))
        numpyro.sample("locs", dist.Normal(m, 0.1).to_event(1))
        logits = numpyro.param("logits", jnp.zeros((x.shape[0], 2)))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Categorical(logits=logits))

    loss = vigrad.ELBO(estimators={"z": vigrad.Enumerate()})
    result = vigrad.fit(
        model,
        guide,
        loss,
        optax.adam(0.05),
        200,
        jax.random.key(1),
        x,
        progress_bar=False,
    )
    assert jnp.allclose(result.params["m"], jnp.array([-2.06, 2.16]), atol=0.2)
    probs = jax.nn.softmax(result.params["logits"])
    assert bool(jnp.all(probs[:3, 0] > 0.99)) and bool(jnp.all(probs[3:, 1] > 0.99))
