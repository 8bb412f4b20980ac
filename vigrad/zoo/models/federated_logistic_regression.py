"""Logistic regression whose data are split across clients with different feature distributions.

    w ~ Normal(0, I_5),  b ~ Normal(0, 2),  y_n ~ Bernoulli(sigmoid(x_n . w + b)),

4,000 generated examples split into 4 shards (clients). Each client's features are shifted and
scaled differently and its share of positive labels differs (non-IID shards), which is what makes
federated samplers that run many local steps per round drift. ``load_shards()`` returns the split;
``load_data()`` the pooled data.
"""

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer.autoguide import AutoMultivariateNormal

NUM_SHARDS = 4
TRUE_W = np.array([1.5, -2.0, 0.5, 0.0, 1.0])
TRUE_B = -0.5


def load_shards():
    """A list of ``{"x": [n_s, 5], "y": [n_s]}``, one per client."""
    rng = np.random.default_rng(7)
    shards = []
    for s in range(NUM_SHARDS):
        shift = rng.normal(scale=1.5, size=5)
        x = shift + (0.5 + 0.5 * s) * rng.normal(size=(1000, 5))
        p = 1.0 / (1.0 + np.exp(-(x @ TRUE_W + TRUE_B)))
        y = (rng.uniform(size=1000) < p).astype("float32")
        shards.append({"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y)})
    return shards


def load_data():
    shards = load_shards()
    return {k: jnp.concatenate([s[k] for s in shards]) for k in ("x", "y")}


def model(x, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 2.0))
    # numpyro.subsample: the plate's minibatch of the data when it subsamples (SG-MCMC).
    with numpyro.plate("data", x.shape[0]):
        xb = numpyro.subsample(x, event_dim=1)
        yb = None if y is None else numpyro.subsample(y, event_dim=0)
        numpyro.sample("y", dist.Bernoulli(logits=xb @ w + b), obs=yb)


guide = AutoMultivariateNormal(model)
STEPS = 2000
LEARNING_RATE = 2e-2
DATA_PLATE = "data"
REFERENCE = "reference/federated_logistic_regression.json"
