"""Bayesian logistic regression on the Wisconsin breast-cancer data (569 tumours, 30 features).

    w_d ~ Normal(0, 1),  b ~ Normal(0, 5),  y_n ~ Bernoulli(sigmoid(x_n . w + b)).

Features are standardised. The data ship with the zoo (``data/breast_cancer.npz``). The guide is a
full-rank Gaussian (``AutoMultivariateNormal``): the coefficients of correlated features are
correlated a posteriori.
"""

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from _datasets import breast_cancer
from numpyro.infer.autoguide import AutoMultivariateNormal


def load_data():
    features, labels = breast_cancer()
    x = (features - features.mean(0)) / features.std(0)
    return {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(labels, jnp.float32)}


def model(x, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 5.0))
    # numpyro.subsample: the plate's minibatch of the data when it subsamples (SG-MCMC).
    with numpyro.plate("data", x.shape[0]):
        xb = numpyro.subsample(x, event_dim=1)
        yb = None if y is None else numpyro.subsample(y, event_dim=0)
        numpyro.sample("y", dist.Bernoulli(logits=xb @ w + b), obs=yb)


guide = AutoMultivariateNormal(model)
NUM_PARTICLES = 1
STEPS = 3000
LEARNING_RATE = 1e-2
DATA_PLATE = "data"
REFERENCE = "reference/logistic_regression.json"
