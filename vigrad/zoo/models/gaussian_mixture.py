"""A three-component Gaussian mixture in two dimensions (generated data), assignments summed out.

    weights ~ Dirichlet(1, 1, 1),  locs_k ~ Normal(0, 10 I),  z_n ~ Categorical(weights),
    x_n ~ Normal(locs_{z_n}, 0.7 I),  n = 1..300.

The guide has a Dirichlet for the weights, Gaussians for the component means and one categorical
per point for the assignments, which ``Enumerate`` sums out exactly (no sampling noise from the
300 discrete latents). Label switching makes a reference posterior ill-defined, so there is none.
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

import vigrad

K = 3
SCALE = 0.7


def load_data():
    rng = np.random.default_rng(3)
    centres = np.array([[-3.0, 0.0], [3.0, 1.0], [0.0, 4.0]])
    z = rng.choice(K, size=300, p=[0.5, 0.3, 0.2])
    x = centres[z] + SCALE * rng.normal(size=(300, 2))
    return {"x": jnp.asarray(x, jnp.float32)}


def model(x):
    weights = numpyro.sample("weights", dist.Dirichlet(jnp.ones(K)))
    locs = numpyro.sample("locs", dist.Normal(0.0, 10.0).expand([K, 2]).to_event(2))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Categorical(probs=weights))
        numpyro.sample("x", dist.Normal(locs[z], SCALE).to_event(1), obs=x)


def guide(x):
    concentration = numpyro.param("concentration", jnp.ones(K), constraint=constraints.positive)
    numpyro.sample("weights", dist.Dirichlet(concentration))
    # Spread initial means, so components start apart.
    loc = numpyro.param("locs_loc", jnp.array([[-1.0, -1.0], [1.0, -1.0], [0.0, 1.0]]))
    scale = numpyro.param("locs_scale", 0.5 * jnp.ones((K, 2)), constraint=constraints.positive)
    numpyro.sample("locs", dist.Normal(loc, scale).to_event(2))
    logits = numpyro.param("assignment_logits", jnp.zeros((x.shape[0], K)))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.Categorical(logits=logits))


ESTIMATORS = {"z": vigrad.Enumerate()}
NUM_PARTICLES = 1
STEPS = 2000
LEARNING_RATE = 5e-2
DATA_PLATE = "data"
