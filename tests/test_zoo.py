"""Every zoo model loads, its guide matches the model and its estimators serve their sites.

The gradient of the recommended objective is traced abstractly (``jax.eval_shape``), which runs
every vigrad check on the real data without compiling; one zoo model is fitted end to end in
test_cli.py.
"""

import jax
import numpy as np
import pytest
from numpyro.handlers import seed, trace

import vigrad
from vigrad.zoo import list_models, load_model

EXPECTED = {
    "bayesian_mlp",
    "bernoulli_mixture",
    "eight_schools",
    "federated_logistic_regression",
    "gaussian_mixture",
    "hierarchical_regression",
    "logistic_regression",
    "vae",
}


def test_the_zoo_has_every_model():
    assert EXPECTED <= set(list_models())


def _param_shapes(name: str, data: dict) -> dict:
    # A fresh load: an autoguide builds its prototype on its first call, here inside eval_shape.
    guide_trace = trace(seed(load_model(name).guide, 0)).get_trace
    return jax.eval_shape(
        lambda: {k: v["value"] for k, v in guide_trace(**data).items() if v["type"] == "param"}
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_zoo_model_traces_with_its_recommended_estimators(name):
    data = dict(load_model(name).load_data())
    for value in data.values():
        assert np.all(np.isfinite(np.asarray(value)))
    params = _param_shapes(name, data)
    zm = load_model(name)
    loss = vigrad.ELBO(num_particles=zm.num_particles, estimators=zm.estimators)
    key = jax.random.key(0)
    grad = jax.eval_shape(jax.grad(lambda p: loss.loss(key, p, zm.model, zm.guide, **data)), params)
    assert jax.tree.map(lambda g: g.shape, grad) == jax.tree.map(lambda p: p.shape, params)
    if zm.reference is not None:
        model_trace = trace(seed(zm.model, 0)).get_trace
        tr = jax.eval_shape(lambda: {k: v["value"] for k, v in model_trace(**data).items()})
        for site, ref in zm.reference["sites"].items():
            assert site in tr, f"reference site {site} not in the model"
            assert len(ref["mean"]) == max(1, int(np.prod(tr[site].shape)))
