"""A variational autoencoder on binarised handwritten digits (amortised inference).

    z_n ~ Normal(0, I_4),  x_n ~ Bernoulli(sigmoid(decoder(z_n))),  decoder: 4 -> 64 -> 64 (tanh).

The decoder weights are point-estimated (``numpyro.param`` in the model); the guide is an encoder
network 64 -> 64 -> (mean, log scale) of ``z_n``. Minibatches of 256 images per step come from the
data plate. The posterior summary reports the latent codes of the images in the last minibatch.
"""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from _datasets import digits

LATENT = 4
HIDDEN = 64
BATCH = 256


def load_data():
    x, _ = digits(binary=True)
    return {"x": x}


def _dense(name, x, n_out):
    n_in = x.shape[-1]
    init = jax.random.normal(jax.random.key(hash(name) % 2**31), (n_in, n_out)) / jnp.sqrt(n_in)
    w = numpyro.param(f"{name}_w", init)
    b = numpyro.param(f"{name}_b", jnp.zeros(n_out))
    return x @ w + b


def model(x):
    with numpyro.plate("data", x.shape[0], subsample_size=min(BATCH, x.shape[0])) as idx:
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([LATENT]).to_event(1))
        logits = _dense("dec2", jnp.tanh(_dense("dec1", z, HIDDEN)), x.shape[1])
        numpyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x[idx])


def guide(x):
    with numpyro.plate("data", x.shape[0], subsample_size=min(BATCH, x.shape[0])) as idx:
        h = jnp.tanh(_dense("enc1", x[idx], HIDDEN))
        loc = _dense("enc_loc", h, LATENT)
        scale = jax.nn.softplus(_dense("enc_scale", h, LATENT)) + 1e-3
        numpyro.sample("z", dist.Normal(loc, scale).to_event(1))


NUM_PARTICLES = 1
STEPS = 3000
LEARNING_RATE = 3e-3
DATA_PLATE = "data"
