"""vigrad.ELBO in place of NumPyro's ELBOs: stateful neural guides (batch normalisation) under SVI
and vigrad.fit."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.contrib.module import eqx_module
from numpyro.primitives import mutable

import vigrad

# --- a guide network with batch normalisation --------------------------------------------------

X = jnp.linspace(-1.0, 3.0, 8)
MOMENTUM = 0.9


class Encoder(eqx.Module):
    """Batch norm on the data point, then a linear map to the guide's location and raw scale."""

    norm: eqx.nn.BatchNorm
    linear: eqx.nn.Linear

    def __init__(self, key):
        self.norm = eqx.nn.BatchNorm(1, axis_name="batch", momentum=MOMENTUM, mode="batch")
        self.linear = eqx.nn.Linear(1, 2, key=key)

    def __call__(self, x, state):
        h, state = self.norm(x[None], state)
        return self.linear(h), state


ENCODER, ENCODER_STATE = eqx.nn.make_with_state(Encoder)(jax.random.key(0))


def model(x):
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def bn_guide(x):
    net = eqx_module("encoder", ENCODER)
    holder = mutable("encoder$state", {"state": ENCODER_STATE})
    batched = jax.vmap(net, in_axes=(0, None), out_axes=(0, None), axis_name="batch")
    out, holder["state"] = batched(x, holder["state"])
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.Normal(out[:, 0], jax.nn.softplus(out[:, 1])))


def _check_running_statistics(state, updates):
    """The statistics after ``updates`` training passes over ``X``: an exponential moving average
    from (mean 0, variance 1) towards the data's batch mean and (biased) variance."""
    counter = state.get(ENCODER.norm.batch_counter)
    mean, var = state.get(ENCODER.norm.batch_state_index)
    kept = MOMENTUM**updates
    assert int(counter) == updates
    np.testing.assert_allclose(mean, [(1 - kept) * jnp.mean(X)], rtol=1e-12)
    np.testing.assert_allclose(var, [kept + (1 - kept) * jnp.var(X)], rtol=1e-12)


def test_batchnorm_guide_under_svi_updates_its_running_statistics():
    svi = numpyro.infer.SVI(model, bn_guide, optax.adam(0.05), vigrad.ELBO())
    result = svi.run(jax.random.key(1), 10, X, progress_bar=False)
    # SVI.init runs the guide once (as NumPyro's own ELBOs count it), then one pass per step.
    _check_running_statistics(result.state.mutable_state["encoder$state"]["state"], 11)
    before = ENCODER.linear.weight
    assert not np.allclose(result.params["encoder$params"].linear.weight, before)


def _fit(num_steps, **kwargs):
    return vigrad.fit(
        model,
        bn_guide,
        vigrad.ELBO(),
        optax.adam(0.05),
        num_steps,
        jax.random.key(2),
        X,
        chunk_size=4,
        progress_bar=False,
        **kwargs,
    )


def test_batchnorm_guide_state_survives_fit_chunks_and_resume(tmp_path):
    whole = _fit(12)
    # fit's initial state is the guide's after one pass, as SVI.init's.
    _check_running_statistics(whole.state["numpyro$mutable"]["encoder$state"]["state"], 13)
    path = tmp_path / "ckpt.npz"
    _fit(8, checkpoint_path=path)
    resumed = _fit(12, checkpoint_path=path, resume="extend")
    np.testing.assert_array_equal(resumed.losses, whole.losses)
    for tree in ("state", "params"):
        leaves = zip(
            jax.tree.leaves(getattr(resumed, tree)),
            jax.tree.leaves(getattr(whole, tree)),
            strict=True,
        )
        for a, b in leaves:
            np.testing.assert_array_equal(a, b)
