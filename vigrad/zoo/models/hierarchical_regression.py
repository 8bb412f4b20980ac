"""Hierarchical linear regression with varying intercepts and slopes (generated data).

    mu_a, mu_b ~ Normal(0, 5),  sigma_a, sigma_b ~ HalfNormal(2),  sigma_y ~ HalfNormal(2),
    a_j = mu_a + sigma_a * ea_j,  b_j = mu_b + sigma_b * eb_j,  ea_j, eb_j ~ Normal(0, 1),
    y_n ~ Normal(a_{g(n)} + b_{g(n)} x_n, sigma_y),  10 groups of 5 to 40 observations.

Non-centred. Generated with a fixed seed, so the data are the same everywhere. Full-rank Gaussian
guide (``AutoMultivariateNormal``: group effects and their scales are correlated a posteriori),
trained with path gradients (sticking the landing).
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer.autoguide import AutoMultivariateNormal

import vigrad

NUM_GROUPS = 10


def load_data():
    rng = np.random.default_rng(20)
    sizes = rng.integers(5, 41, size=NUM_GROUPS)
    group = np.repeat(np.arange(NUM_GROUPS), sizes)
    a = 1.0 + 0.8 * rng.normal(size=NUM_GROUPS)
    b = -0.5 + 0.3 * rng.normal(size=NUM_GROUPS)
    x = rng.normal(size=group.size)
    y = a[group] + b[group] * x + 0.5 * rng.normal(size=group.size)
    return {
        "group": jnp.asarray(group),
        "x": jnp.asarray(x, jnp.float32),
        "y": jnp.asarray(y, jnp.float32),
    }


def model(group, x, y=None):
    mu_a = numpyro.sample("mu_a", dist.Normal(0.0, 5.0))
    mu_b = numpyro.sample("mu_b", dist.Normal(0.0, 5.0))
    sigma_a = numpyro.sample("sigma_a", dist.HalfNormal(2.0))
    sigma_b = numpyro.sample("sigma_b", dist.HalfNormal(2.0))
    sigma_y = numpyro.sample("sigma_y", dist.HalfNormal(2.0))
    with numpyro.plate("groups", NUM_GROUPS):
        ea = numpyro.sample("ea", dist.Normal(0.0, 1.0))
        eb = numpyro.sample("eb", dist.Normal(0.0, 1.0))
    a = numpyro.deterministic("a", mu_a + sigma_a * ea)
    b = numpyro.deterministic("b", mu_b + sigma_b * eb)
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(a[group] + b[group] * x, sigma_y), obs=y)


guide = AutoMultivariateNormal(model)
ESTIMATORS = {"_auto_latent": vigrad.PathGradient()}
NUM_PARTICLES = 4
STEPS = 4000
LEARNING_RATE = 2e-2
DATA_PLATE = "data"
REFERENCE = "reference/hierarchical_regression.json"
