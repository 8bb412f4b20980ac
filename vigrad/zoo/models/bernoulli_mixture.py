"""A mixture of multivariate Bernoullis on binarised handwritten digits (discrete latents).

    pi ~ Dirichlet(1),  theta_kd ~ Beta(1, 1),  z_n ~ Categorical(pi),
    x_nd ~ Bernoulli(theta_{z_n d}),  K = 10 components, 1797 images of 64 pixels.

The assignments ``z`` are discrete latents with one categorical per image in the guide. The
recommended estimator sums them out (``Enumerate``); ``vigrad compare`` and the benchmarks
contrast it with score-function estimators and their control variates.
"""

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from _datasets import digits
from numpyro.distributions import constraints

import vigrad

K = 10


def load_data():
    x, _ = digits(binary=True)
    return {"x": x}


def model(x):
    pi = numpyro.sample("pi", dist.Dirichlet(jnp.ones(K)))
    theta = numpyro.sample("theta", dist.Beta(1.0, 1.0).expand([K, x.shape[1]]).to_event(2))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Categorical(probs=pi))
        numpyro.sample("x", dist.Bernoulli(probs=theta[z]).to_event(1), obs=x)


def guide(x):
    c = numpyro.param("pi_concentration", jnp.ones(K), constraint=constraints.positive)
    numpyro.sample("pi", dist.Dirichlet(c))
    # Components start from the data mean plus a little per-component variation, kept apart.
    init = jnp.clip(x.mean(0) + 0.3 * jnp.sin(jnp.arange(K)[:, None] * jnp.arange(64)), 0.05, 0.95)
    a = numpyro.param("theta_a", 20.0 * init, constraint=constraints.positive)
    b = numpyro.param("theta_b", 20.0 * (1.0 - init), constraint=constraints.positive)
    numpyro.sample("theta", dist.Beta(a, b).to_event(2))
    logits = numpyro.param("assignment_logits", jnp.zeros((x.shape[0], K)))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.Categorical(logits=logits))


ESTIMATORS = {"z": vigrad.Enumerate()}
NUM_PARTICLES = 1
STEPS = 1500
LEARNING_RATE = 5e-2
DATA_PLATE = "data"
