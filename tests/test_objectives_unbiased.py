"""Unbiasedness of multi-sample objectives (IWELBO, VIMCO, Rényi, user programs, DReG) and of
stateful control variates, against exact gradients; negative controls rejected by the same test."""

import functools
import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpy.polynomial.hermite_e import hermegauss
from unbiased import THRESHOLD, gradient_samples, max_abs_z

import vigrad
from vigrad.estimators.control_variates import ControlVariate, EmptyState
from vigrad.estimators.log_prob import log_prob
from vigrad.objectives.program import log_mean_exp
from vigrad.objectives.renyi import renyi_bound

M = 20_000

# Discrete model: a categorical k and a Bernoulli z whose guide depends on k.
Y = 0.8
MUS = jnp.array([-2.0, 0.0, 2.0])
PRIOR_K = jnp.array([0.2, 0.5, 0.3])
DISC = {"b": jnp.array([0.2, -0.1, 0.4]), "a0": jnp.array(0.3), "a1": jnp.array(-0.6)}


def disc_model(y):
    k = numpyro.sample("k", dist.Categorical(probs=PRIOR_K))
    z = numpyro.sample("z", dist.Bernoulli(probs=0.4))
    numpyro.sample("y", dist.Normal(MUS[k] + z, 1.0), obs=y)


def disc_guide(y):
    k = numpyro.sample("k", dist.Categorical(logits=numpyro.param("b", jnp.zeros(3))))
    a0, a1 = numpyro.param("a0", 0.0), numpyro.param("a1", 0.0)
    numpyro.sample("z", dist.Bernoulli(logits=a0 + a1 * k))


def disc_configs(p):
    """log q and log w of each of the 6 configurations (k, z)."""
    lq, lw = [], []
    for k, z in itertools.product(range(3), (0.0, 1.0)):
        # vigrad's log_prob: NumPyro's Bernoulli gradient is wrong at exactly zero logits.
        q = dist.Categorical(logits=p["b"]).log_prob(k) + log_prob(
            dist.Bernoulli(logits=p["a0"] + p["a1"] * k), z
        )
        lp = (
            jnp.log(PRIOR_K[k])
            + dist.Bernoulli(probs=0.4).log_prob(z)
            + dist.Normal(MUS[k] + z, 1.0).log_prob(Y)
        )
        lq.append(q)
        lw.append(lp - q)
    return jnp.stack(lq), jnp.stack(lw)


def exact_by_enumeration(fn, k):
    """-E[fn(log w_1..K)] over all 6^K configurations of K independent particles."""

    def neg(p):
        lq, lw = disc_configs(p)
        idx = jnp.array(list(itertools.product(range(6), repeat=k)))
        weights = jnp.exp(jnp.sum(lq[idx], axis=1))
        return -jnp.sum(weights * jax.vmap(fn)(lw[idx]))

    return neg


@functools.cache
def exact_enumeration_gradient(fn, k) -> dict:
    """The gradient of ``exact_by_enumeration(fn, k)`` at ``DISC``, compiled: op by op, the sum
    over configurations costs more than the Monte Carlo check itself."""
    return jax.jit(jax.grad(exact_by_enumeration(fn, k)))(DISC)


def disc_z(objective, fn, k, seed=0):
    loss = lambda key, p: objective.loss(key, p, disc_model, disc_guide, Y)
    grads = gradient_samples(loss, DISC, jax.random.key(seed), M)
    return max_abs_z(grads, exact_enumeration_gradient(fn, k))


K = 3


@pytest.mark.parametrize(
    "make",
    [
        lambda: (vigrad.IWELBO(K), log_mean_exp),
        lambda: (vigrad.VIMCO(K), log_mean_exp),
        lambda: (vigrad.RenyiELBO(0.5, K), lambda lw: renyi_bound(lw, 0.5)),
    ],
    ids=["iwelbo", "vimco", "renyi"],
)
def test_multisample_score_unbiased_by_enumeration(make):
    objective, fn = make()
    assert disc_z(objective, fn, K) < THRESHOLD


def test_user_program_unbiased_by_enumeration():
    def soft_max_weight(log_w):
        # A user's objective: any differentiable function of the log weights.
        return 0.5 * log_mean_exp(2.0 * log_w) + 0.1 * jnp.mean(log_w)

    objective = vigrad.objective(num_particles=K)(soft_max_weight)
    assert disc_z(objective, soft_max_weight, K) < THRESHOLD


def test_negative_control_baseline_including_own_particle_is_rejected():
    """Subtracting the mean signal over all particles (own one included) is biased."""
    own = ControlVariate(
        lambda s: EmptyState(), lambda s, st: (jnp.broadcast_to(s.mean(0), s.shape), st)
    )
    objective = vigrad.IWELBO(K, estimators={"k": vigrad.Score(own), "z": vigrad.Score(own)})
    assert disc_z(objective, log_mean_exp, K) > THRESHOLD


def test_leave_one_out_rejected_where_particles_are_combined():
    objective = vigrad.IWELBO(K, estimators={"k": vigrad.Score(vigrad.LeaveOneOut())})
    with pytest.raises(vigrad.EstimatorError, match="Site 'k'.*VIMCO"):
        jax.eval_shape(lambda: objective.loss(jax.random.key(0), DISC, disc_model, disc_guide, Y))


# Continuous model with a model parameter: IWELBO / Rényi gradients by 2-D Gauss-Hermite quadrature.
X = jnp.array([0.5, 1.2, -0.3, 2.0])
CONT = {"m": jnp.array(0.2), "s": jnp.array(0.9), "loc": jnp.array(-0.3)}


def cont_model(x):
    loc = numpyro.param("loc", 0.0)
    mu = numpyro.sample("mu", dist.Normal(loc, 1.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def cont_guide(x):
    numpyro.sample("mu", dist.Normal(numpyro.param("m", 0.0), numpyro.param("s", 1.0)))


def exact_by_quadrature(fn):
    nodes, weights = hermegauss(60)
    nodes = jnp.asarray(nodes)
    w = jnp.asarray(weights) / jnp.sqrt(2 * jnp.pi)

    def neg(p):
        z = p["m"] + p["s"] * nodes
        lw = (
            dist.Normal(p["loc"], 1.0).log_prob(z)
            + dist.Normal(z[:, None], 1.0).log_prob(X).sum(-1)
            - dist.Normal(p["m"], p["s"]).log_prob(z)
        )
        pairs = jnp.stack(jnp.broadcast_arrays(lw[:, None], lw[None, :]), -1)
        values = jax.vmap(jax.vmap(fn))(pairs)
        return -jnp.sum(w[:, None] * w[None, :] * values)

    return neg


@functools.cache
def exact_quadrature_gradient(fn) -> dict:
    """The gradient of ``exact_by_quadrature(fn)`` at ``CONT``, compiled."""
    return jax.jit(jax.grad(exact_by_quadrature(fn)))(CONT)


def cont_z(objective, fn, seed=0):
    loss = lambda key, p: objective.loss(key, p, cont_model, cont_guide, X)
    grads = gradient_samples(loss, CONT, jax.random.key(seed), M)
    return max_abs_z(grads, exact_quadrature_gradient(fn))


def test_iwelbo_reparam_unbiased():
    assert cont_z(vigrad.IWELBO(2), log_mean_exp) < THRESHOLD


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_dreg_unbiased(alpha):
    fn = lambda lw: renyi_bound(lw, alpha)
    assert cont_z(vigrad.DReG(2, alpha=alpha), fn) < THRESHOLD


def test_naive_stl_inside_iwelbo_is_refused_and_its_bias_detected():
    objective = vigrad.IWELBO(2, estimators={"mu": vigrad.PathGradient()})
    with pytest.raises(vigrad.EstimatorError, match="PathGradient.*'mu'.*IWELBO.*DReG"):
        jax.eval_shape(lambda: objective.loss(jax.random.key(0), CONT, cont_model, cont_guide, X))
    objective.check_unbiasedness = False
    assert cont_z(objective, log_mean_exp) > THRESHOLD


def test_dreg_rejects_score_sites():
    objective = vigrad.DReG(3, estimators={"k": vigrad.Score(), "z": vigrad.Score()})
    with pytest.raises(vigrad.EstimatorError, match="site 'k'"):
        jax.eval_shape(lambda: objective.loss(jax.random.key(0), DISC, disc_model, disc_guide, Y))


# Stateful control variates: the state after some steps depends on past samples only.


def _grad_after_warmup(objective, steps, key):
    def one(key):
        keys = jax.random.split(key, steps + 1)
        state = objective.init_state(keys[0], DISC, disc_model, disc_guide, Y)

        def step(state, k):
            _, state = objective.loss_and_state(k, DISC, disc_model, disc_guide, (Y,), {}, state)
            return state, None

        state, _ = jax.lax.scan(step, state, keys[1:steps])
        loss = lambda p: objective.loss_and_state(
            keys[steps], p, disc_model, disc_guide, (Y,), {}, state
        )[0]
        return jax.grad(loss)(DISC)

    return jax.jit(jax.vmap(one))(jax.random.split(key, M))


STATEFUL = {
    "moving-average": lambda: vigrad.MovingAverage(0.8),
    "learned": lambda: vigrad.Learned(
        eqx.nn.Linear("scalar", "scalar", key=jax.random.key(0)), 1.0, 0.05
    ),
}


@functools.cache
def score_after_warmup(control_variate, num_particles, steps, seed):
    """Score gradients on both sites after ``steps`` updates of the named control variate, cached:
    the unbiasedness and the variance tests of the moving average share one compiled scan."""
    cv = STATEFUL[control_variate]()
    objective = vigrad.ELBO(
        num_particles, estimators={"k": vigrad.Score(cv), "z": vigrad.Score(cv)}
    )
    return _grad_after_warmup(objective, steps, jax.random.key(seed))


@pytest.mark.parametrize(
    "control_variate,num_particles,steps,seed",
    [("moving-average", 1, 20, 4), ("learned", 2, 6, 2)],
    ids=["moving-average", "learned"],
)
def test_stateful_control_variates_unbiased_after_steps(
    control_variate, num_particles, steps, seed
):
    grads = score_after_warmup(control_variate, num_particles, steps, seed)
    assert max_abs_z(grads, exact_enumeration_gradient(jnp.mean, 1)) < THRESHOLD


def test_moving_average_reduces_variance_after_steps():
    plain = vigrad.ELBO(1, estimators={"k": vigrad.Score(), "z": vigrad.Score()})
    var = lambda g: sum(float(np.var(x, axis=0).sum()) for x in jax.tree.leaves(g))
    # The plain estimator has no state: no warm-up to run.
    loss = lambda key, p: plain.loss(key, p, disc_model, disc_guide, Y)
    v_plain = var(gradient_samples(loss, DISC, jax.random.key(4), M))
    v_avg = var(score_after_warmup("moving-average", 1, 20, 4))
    assert v_avg < 0.5 * v_plain


# Reweighted wake-sleep: wake-theta is the IWELBO's theta-gradient; both wake-phi forms are unbiased
# for E[sum_k w~_k grad_phi log q(z_k)] (computed by quadrature).


@functools.cache
def exact_rws_loss_gradient():
    theta = exact_quadrature_gradient(log_mean_exp)["loc"]
    return {"loc": theta, **jax.jit(_wake_phi_loss_gradient)()}


def _wake_phi_loss_gradient():
    nodes, weights = hermegauss(60)
    nodes = jnp.asarray(nodes)
    ww = jnp.asarray(weights) / jnp.sqrt(2 * jnp.pi)
    p = CONT
    z = p["m"] + p["s"] * nodes
    lw = (
        dist.Normal(p["loc"], 1.0).log_prob(z)
        + dist.Normal(z[:, None], 1.0).log_prob(X).sum(-1)
        - dist.Normal(p["m"], p["s"]).log_prob(z)
    )
    a, b = jnp.broadcast_arrays(lw[:, None], lw[None, :])
    wa = jax.nn.sigmoid(a - b)  # normalised weight of the first of two particles
    dm = (z - p["m"]) / p["s"] ** 2
    ds = -1 / p["s"] + (z - p["m"]) ** 2 / p["s"] ** 3
    pair = lambda g: wa * g[:, None] + (1 - wa) * g[None, :]
    expect = lambda f: jnp.sum(ww[:, None] * ww[None, :] * f)
    return {"m": -expect(pair(dm)), "s": -expect(pair(ds))}


@pytest.mark.parametrize("wake", ["score", "dreg"])
def test_rws_wake_phases_unbiased_for_their_expectation(wake):
    objective = vigrad.RWS(2, wake=wake)
    loss = lambda key, p: objective.loss(key, p, cont_model, cont_guide, X)
    grads = gradient_samples(loss, CONT, jax.random.key(7), M)
    assert max_abs_z(grads, exact_rws_loss_gradient()) < THRESHOLD


class _WakeWithoutSecondOrderTerm(vigrad.RWS):
    """A plausible mistake: path terms weighted by w~ instead of w~ - w~^2."""

    @staticmethod
    def dreg_weights(w):
        return w


def test_negative_control_wrong_dreg_wake_weights_rejected():
    objective = _WakeWithoutSecondOrderTerm(2, wake="dreg")
    loss = lambda key, p: objective.loss(key, p, cont_model, cont_guide, X)
    grads = gradient_samples(loss, CONT, jax.random.key(7), M)
    assert max_abs_z(grads, exact_rws_loss_gradient()) > THRESHOLD
