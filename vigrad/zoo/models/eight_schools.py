"""Eight schools (Rubin 1981): a hierarchical normal model of coaching effects, non-centred.

    mu ~ Normal(0, 5),  tau ~ HalfCauchy(5),  theta_tilde_j ~ Normal(0, 1),
    y_j ~ Normal(mu + tau * theta_tilde_j, sigma_j),  j = 1..8.

The guide is mean-field Gaussian in the unconstrained space (``AutoNormal``). ``tau`` is trained
with path gradients (sticking the landing), the rest with the plain reparameterisation gradient.
"""

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.infer.autoguide import AutoNormal

import vigrad

# Treatment effects and their standard errors (Gelman et al., Bayesian Data Analysis, table 5.2).
EFFECTS = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
STD_ERRORS = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]


def load_data():
    return {"sigma": jnp.array(STD_ERRORS), "y": jnp.array(EFFECTS)}


def model(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("schools", sigma.shape[0]):
        theta_tilde = numpyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        numpyro.deterministic("theta", mu + tau * theta_tilde)
        numpyro.sample("y", dist.Normal(mu + tau * theta_tilde, sigma), obs=y)


guide = AutoNormal(model)
ESTIMATORS = {"tau": vigrad.PathGradient()}
NUM_PARTICLES = 4
STEPS = 3000
LEARNING_RATE = 2e-2
DATA_PLATE = "schools"
REFERENCE = "reference/eight_schools.json"
