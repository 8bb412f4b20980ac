"""vigrad.ELBO in place of NumPyro's ELBOs: stateful neural guides (batch normalisation) under SVI
and vigrad.fit."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
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


# One objective and optimiser for every fit of the guide: the runs share one compiled chunk.
FIT_ELBO, FIT_ADAM = vigrad.ELBO(), optax.adam(0.05)


def _fit(num_steps, **kwargs):
    return vigrad.fit(
        model,
        bn_guide,
        FIT_ELBO,
        FIT_ADAM,
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


# --- the same values as NumPyro's ELBOs ----------------------------------------------------------
# vigrad derives each particle block's key from the loss key by the block's position in the
# objective program (so a program that draws several times replays the same draws), and splits it
# into guide and model keys in the other order from NumPyro: on the same key the two draw different
# samples. With a guide that draws nothing at random (Delta sites) the values are compared exactly;
# with a random guide their distributions over many keys are (a z-test of the means, vmapped).

Y = jnp.array([1.1, 0.4, 2.3, 1.8, 0.9, 1.5])
KEYS = jax.random.split(jax.random.key(3), 4000)


def gauss_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 0.5))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)
    numpyro.factor("penalty", -0.1 * mu**2)


def gauss_guide(y):
    loc = numpyro.param("loc", jnp.array([0.8, 0.1]))
    scale = numpyro.param("scale", jnp.array([0.4, 0.3]), constraint=dist.constraints.positive)
    numpyro.sample("mu", dist.Normal(loc[0], scale[0]))
    numpyro.sample("sigma", dist.LogNormal(loc[1], scale[1]))


def delta_guide(y):
    loc = numpyro.param("loc", jnp.array([0.8, 0.1]))
    numpyro.sample("mu", dist.Delta(loc[0]))
    numpyro.sample("sigma", dist.Delta(jnp.exp(loc[1])))


PARAMS = {"loc": jnp.array([0.8, 0.1]), "scale": jnp.array([0.4, 0.3])}
PAIRS = {
    "Trace_ELBO": (numpyro.infer.Trace_ELBO(), vigrad.ELBO()),
    "TraceMeanField_ELBO": (numpyro.infer.TraceMeanField_ELBO(), vigrad.ELBO(analytic_kl=True)),
    "TraceGraph_ELBO": (
        numpyro.infer.TraceGraph_ELBO(),
        vigrad.ELBO(estimators=lambda site: vigrad.Score()),
    ),
    "RenyiELBO": (
        numpyro.infer.RenyiELBO(alpha=0.5, num_particles=4),
        vigrad.RenyiELBO(alpha=0.5, num_particles=4),
    ),
    "sum_sites=False": (
        numpyro.infer.Trace_ELBO(sum_sites=False),
        vigrad.ELBO(sum_sites=False),
    ),
}


@pytest.fixture(scope="module")
def losses():
    """Every pair's (NumPyro's, vigrad's) losses: with the deterministic guide on two keys, with the
    random guide on all of ``KEYS``. One compilation for all of them: a compilation's fixed cost
    dominates programs this small."""

    def pairs(guide, keys):
        one = lambda k: {
            n: [loss.loss(k, PARAMS, gauss_model, guide, Y) for loss in pair]
            for n, pair in PAIRS.items()
        }
        return jax.vmap(one)(keys)

    return jax.jit(lambda keys: (pairs(delta_guide, keys[:2]), pairs(gauss_guide, keys)))(KEYS)


@pytest.mark.parametrize("name", list(PAIRS))
def test_loss_equals_numpyros_with_a_deterministic_guide(name, losses):
    theirs, ours = losses[0][name]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), theirs, ours)


def _same_mean(theirs, ours, threshold=4.5):
    """z-statistic of the difference of two means of independent draws (leading axis)."""
    se = jnp.sqrt(jnp.var(theirs, axis=0) / len(theirs) + jnp.var(ours, axis=0) / len(ours))
    z = jnp.abs(jnp.mean(theirs, axis=0) - jnp.mean(ours, axis=0)) / se
    assert jnp.all(z < threshold), (jnp.mean(theirs, axis=0), jnp.mean(ours, axis=0), z)


@pytest.mark.parametrize("name", list(PAIRS))
def test_loss_distributed_as_numpyros_with_a_random_guide(name, losses):
    theirs, ours = losses[1][name]
    jax.tree.map(_same_mean, theirs, ours)


# --- guides that draw several samples per site ---------------------------------------------------

S = 3


def sample_guide(y):
    m = numpyro.param("m", 0.3)
    s = numpyro.param("s", 0.8, constraint=dist.constraints.positive)
    numpyro.sample("mu", dist.Normal(m, s), sample_shape=(S,))


def mean_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


MULTI_SAMPLE = {
    "numpyro": numpyro.infer.Trace_ELBO(multi_sample_guide=True),
    "Reparam": vigrad.ELBO(multi_sample_guide=True, estimators={"mu": vigrad.Reparam()}),
    "Score": vigrad.ELBO(multi_sample_guide=True, estimators={"mu": vigrad.Score()}),
}


@pytest.fixture(scope="module")
def multi_sample_losses_and_grads():
    """Loss and gradient of each of ``MULTI_SAMPLE`` on every key, in one compilation."""
    params = {"m": jnp.array(0.3), "s": jnp.array(0.8)}

    def one(key):
        fn = lambda p, loss: loss.loss(key, p, mean_model, sample_guide, Y)
        return {n: jax.value_and_grad(fn)(params, loss) for n, loss in MULTI_SAMPLE.items()}

    return jax.jit(jax.vmap(one))(KEYS)


@pytest.mark.parametrize("estimator", ["Reparam", "Score"])
def test_multi_sample_guide_loss_and_gradient_distributed_as_numpyros(
    estimator, multi_sample_losses_and_grads
):
    draws = multi_sample_losses_and_grads
    jax.tree.map(_same_mean, draws["numpyro"], draws[estimator])


def test_multi_sample_guide_fits_the_posterior_under_svi_and_fit():
    # Each of the S independent samples scores the same ELBO: the optimum is the exact posterior.
    precision = Y.shape[0] + 1 / 4
    optimizer = optax.adam(optax.exponential_decay(0.05, 400, 0.05))
    loss = vigrad.ELBO(multi_sample_guide=True)
    svi = numpyro.infer.SVI(mean_model, sample_guide, optimizer, loss)
    under_svi = svi.run(jax.random.key(4), 400, Y, progress_bar=False).params
    under_fit = vigrad.fit(
        mean_model, sample_guide, loss, optimizer, 400, jax.random.key(4), Y, progress_bar=False
    ).params
    for params in (under_svi, under_fit):
        np.testing.assert_allclose(params["m"], jnp.sum(Y) / precision, atol=0.03)
        np.testing.assert_allclose(params["s"], precision**-0.5, atol=0.03)


def test_several_samples_per_site_without_the_option_is_refused():
    with pytest.raises(vigrad.ModelGuideMismatchError, match=r"multi_sample_guide=True"):
        vigrad.ELBO().loss(jax.random.key(0), {"m": 0.3, "s": 0.8}, mean_model, sample_guide, Y)


def test_multi_sample_guide_with_unequal_sample_counts_is_refused():
    def uneven_guide(y):
        numpyro.sample("mu", dist.Normal(0.0, 1.0), sample_shape=(S,))
        numpyro.sample("sigma", dist.LogNormal(0.0, 1.0), sample_shape=(S + 1,))

    with pytest.raises(vigrad.ModelGuideMismatchError, match=r"site 'sigma' has shape \(4,\)"):
        vigrad.ELBO(multi_sample_guide=True).loss(
            jax.random.key(0), {}, gauss_model, uneven_guide, Y
        )


def mutable_model(y):
    mutable("seen", {"n": jnp.array(0.0)})
    mean_model(y)


def enumerated_guide(y):
    numpyro.sample("mu", dist.Normal(0.0, 1.0), sample_shape=(S,))
    numpyro.sample(
        "k", dist.Bernoulli(0.3), sample_shape=(S,), infer={"estimator": vigrad.Enumerate()}
    )


def model_with_k(y):
    numpyro.sample("k", dist.Bernoulli(0.5))
    mean_model(y)


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("analytic_kl", vigrad.EstimatorError, r"Analytic KL terms with multi_sample_guide=True"),
        ("mutable model", vigrad.ModelGuideMismatchError, r"numpyro.mutable site 'seen'"),
        ("Enumerate", vigrad.EstimatorError, r"Enumerate\(\) or MVD\(\) on \['k'\]"),
        ("R2G2", vigrad.EstimatorError, r"\['R2G2'\] on \['mu'\] with multi_sample_guide=True"),
    ],
)
def test_multi_sample_guide_refusals(case, error, message):
    fitted_model, guide, loss = {
        "analytic_kl": (
            mean_model,
            sample_guide,
            vigrad.ELBO(analytic_kl=True, multi_sample_guide=True),
        ),
        "mutable model": (mutable_model, sample_guide, vigrad.ELBO(multi_sample_guide=True)),
        "Enumerate": (model_with_k, enumerated_guide, vigrad.ELBO(multi_sample_guide=True)),
        "R2G2": (
            mean_model,
            sample_guide,
            vigrad.ELBO(multi_sample_guide=True, estimators={"mu": vigrad.R2G2()}),
        ),
    }[case]
    with pytest.raises(error, match=message):
        loss.loss(jax.random.key(0), {"m": 0.3, "s": 0.8}, fitted_model, guide, Y)
