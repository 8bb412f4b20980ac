"""A Bayesian neural network (one hidden layer of 32 tanh units) classifying handwritten digits.

    W1 ~ Normal(0, 1) [64 x 32],  W2 ~ Normal(0, 1/sqrt(32)) [32 x 10],  biases ~ Normal(0, 1),
    y_n ~ Categorical(softmax(tanh(x_n W1 + b1) W2 + b2)),  1797 images (pixels scaled to [0, 1]).

Mean-field Gaussian guide over all weights (``AutoNormal``, small initial scales), trained on
minibatches: the data plate subsamples 256 images per step with the N/n likelihood scaling.
"""

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from _datasets import digits
from numpyro.infer.autoguide import AutoNormal

HIDDEN = 32
BATCH = 256


def load_data():
    x, y = digits(binary=False)
    return {"x": x, "y": y}


def model(x, y=None):
    d, h = x.shape[1], HIDDEN
    w1 = numpyro.sample("w1", dist.Normal(0.0, 1.0).expand([d, h]).to_event(2))
    b1 = numpyro.sample("b1", dist.Normal(0.0, 1.0).expand([h]).to_event(1))
    w2 = numpyro.sample("w2", dist.Normal(0.0, h**-0.5).expand([h, 10]).to_event(2))
    b2 = numpyro.sample("b2", dist.Normal(0.0, 1.0).expand([10]).to_event(1))
    with numpyro.plate("data", x.shape[0], subsample_size=min(BATCH, x.shape[0])) as idx:
        logits = jnp.tanh(x[idx] @ w1 + b1) @ w2 + b2
        numpyro.sample("y", dist.Categorical(logits=logits), obs=None if y is None else y[idx])


guide = AutoNormal(model, init_scale=0.05)
NUM_PARTICLES = 1
STEPS = 2000
LEARNING_RATE = 1e-2
DATA_PLATE = "data"
