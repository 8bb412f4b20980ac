"""Models with exact answers, shared by the tests.

The conjugate Gaussian: ``mu ~ N(0, 1)``, ``x_i ~ N(mu, 1)`` for ``i = 1..n``, with the mean-field
guide ``mu ~ N(m, s)``. The posterior is ``N(sum(x) / (n + 1), 1 / (n + 1))``, so the guide can
match it exactly at ``(m, s) = conjugate_posterior(x)``.
"""

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist


def conjugate_model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def conjugate_guide(x):
    m = numpyro.param("m", 0.0)
    s = numpyro.param("s", 1.0, constraint=dist.constraints.positive)
    numpyro.sample("mu", dist.Normal(m, s))


def conjugate_posterior(x) -> dict:
    """The guide parameters ``{"m", "s"}`` at which the guide is the exact posterior."""
    n = x.shape[0]
    return {"m": jnp.sum(x) / (n + 1), "s": 1.0 / jnp.sqrt(n + 1.0)}
