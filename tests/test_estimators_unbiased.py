"""Unbiasedness of Reparam, PathGradient and Score (and mixes) in the ELBO, against exact gradients.

Each case draws M gradient estimates at fixed parameters (vmap over keys) and runs the z-test of
``unbiased.max_abs_z``; the negative controls are deliberately biased estimators that the same test
must reject.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpy.polynomial.hermite_e import hermegauss
from numpyro.infer.autoguide import AutoDiagonalNormal
from unbiased import THRESHOLD, gradient_samples, max_abs_z

import vigrad
from tests.models import conjugate_guide, conjugate_model, conjugate_posterior
from vigrad.estimators.control_variates import ControlVariate, EmptyState

M = 20_000
LOG2PI = jnp.log(2 * jnp.pi)

# Conjugate model: mu1 ~ N(0, 1), mu2 ~ N(0, 2^2), x_i ~ N(mu1 + mu2, 1); mean-field Gaussian guide.
X = jnp.array([0.5, 1.2, -0.3, 2.0])
GAUSS_PARAMS = {"m1": 0.3, "s1": 0.8, "m2": -0.4, "s2": 1.3}


def gauss_model(x):
    mu1 = numpyro.sample("mu1", dist.Normal(0.0, 1.0))
    mu2 = numpyro.sample("mu2", dist.Normal(0.0, 2.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(mu1 + mu2, 1.0), obs=x)


def gauss_guide(x):
    for i in (1, 2):
        m = numpyro.param(f"m{i}", 0.0)
        s = numpyro.param(f"s{i}", 1.0, constraint=dist.constraints.positive)
        numpyro.sample(f"mu{i}", dist.Normal(m, s))


def gauss_neg_elbo(p):
    m1, s1, m2, s2 = p["m1"], p["s1"], p["m2"], p["s2"]
    lik = jnp.sum(-0.5 * LOG2PI - 0.5 * ((X - m1 - m2) ** 2 + s1**2 + s2**2))
    prior = (-0.5 * LOG2PI - 0.5 * (m1**2 + s1**2)) + (
        -0.5 * jnp.log(8 * jnp.pi) - (m2**2 + s2**2) / 8
    )
    entropy = 0.5 * jnp.log(2 * jnp.pi * jnp.e * s1**2) + 0.5 * jnp.log(2 * jnp.pi * jnp.e * s2**2)
    return -(lik + prior + entropy)


# Discrete model: local Bernoulli latents in a plate and a global categorical.
XD = jnp.array([1.1, -0.7, 2.0])
Y = 0.8
MUS = jnp.array([-2.0, 0.0, 2.0])
PRIOR_K = jnp.array([0.2, 0.5, 0.3])
DISC_PARAMS = {"a": jnp.array([0.3, -0.5, 1.0]), "b": jnp.array([0.2, -0.1, 0.4])}


def disc_model(x, y):
    k = numpyro.sample("k", dist.Categorical(probs=PRIOR_K))
    numpyro.sample("y", dist.Normal(MUS[k], 1.0), obs=y)
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Bernoulli(probs=0.4))
        numpyro.sample("x", dist.Normal(3.0 * z - 1.5, 1.0), obs=x)


def disc_guide(x, y):
    b = numpyro.param("b", jnp.zeros(3))
    numpyro.sample("k", dist.Categorical(logits=b))
    a = numpyro.param("a", jnp.zeros(x.shape[0]))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.Bernoulli(logits=a))


def disc_neg_elbo(p):
    qz1 = jax.nn.sigmoid(p["a"])
    elbo = 0.0
    for z, qz in ((1.0, qz1), (0.0, 1 - qz1)):
        lp = jnp.log(jnp.where(z == 1.0, 0.4, 0.6)) + dist.Normal(3.0 * z - 1.5, 1.0).log_prob(XD)
        elbo = elbo + jnp.sum(qz * (lp - jnp.log(qz)))
    qk = jax.nn.softmax(p["b"])
    lpk = jnp.log(PRIOR_K) + dist.Normal(MUS, 1.0).log_prob(Y)
    elbo = elbo + jnp.sum(qk * (lpk - jnp.log(qk)))
    return -elbo


# Mixed model: a continuous latent and a discrete latent whose guide depends on it.
XM = 1.3
MIX_PARAMS = {"m": 0.2, "s": 0.9, "a": -0.3, "c": 0.7}


def mix_model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    z = numpyro.sample("z", dist.Bernoulli(logits=mu))
    numpyro.sample("x", dist.Normal(mu + 2.0 * z, 1.0), obs=x)


def mix_guide(x):
    m = numpyro.param("m", 0.0)
    s = numpyro.param("s", 1.0, constraint=dist.constraints.positive)
    mu = numpyro.sample("mu", dist.Normal(m, s))
    a, c = numpyro.param("a", 0.0), numpyro.param("c", 0.0)
    numpyro.sample("z", dist.Bernoulli(logits=a + c * mu))


def mix_neg_elbo(p):
    nodes, weights = hermegauss(80)
    mu = p["m"] + p["s"] * jnp.asarray(nodes)
    w = jnp.asarray(weights) / jnp.sqrt(2 * jnp.pi)
    inner = 0.0
    for z in (0.0, 1.0):
        qz = dist.Bernoulli(logits=p["a"] + p["c"] * mu).log_prob(z)
        lp = dist.Bernoulli(logits=mu).log_prob(z) + dist.Normal(mu + 2.0 * z, 1.0).log_prob(XM)
        inner = inner + jnp.exp(qz) * (lp - qz)
    lq_mu = dist.Normal(p["m"], p["s"]).log_prob(mu)
    return -jnp.sum(w * (inner + dist.Normal(0.0, 1.0).log_prob(mu) - lq_mu))


CASES = {
    "gauss": (gauss_model, gauss_guide, (X,), GAUSS_PARAMS, gauss_neg_elbo),
    "disc": (disc_model, disc_guide, (XD, Y), DISC_PARAMS, disc_neg_elbo),
    "mix": (mix_model, mix_guide, (XM,), MIX_PARAMS, mix_neg_elbo),
}


def case_params(case) -> dict:
    return {k: jnp.asarray(v, jnp.float64) for k, v in CASES[case][3].items()}


@functools.cache
def exact_gradient(case) -> dict:
    """The case's exact gradient, compiled once per module: run op by op, the references (the
    quadrature in particular) cost more than the Monte Carlo check itself."""
    return jax.jit(jax.grad(CASES[case][4]))(case_params(case))


def z_score(case, estimators, num_particles=1, seed=0):
    model, guide, args, _, _ = CASES[case]
    loss = vigrad.ELBO(num_particles=num_particles, estimators=estimators)
    fn = lambda key, p: loss.loss(key, p, model, guide, *args)
    grads = gradient_samples(fn, case_params(case), jax.random.key(seed), M)
    return max_abs_z(grads, exact_gradient(case))


@pytest.mark.parametrize(
    "estimators",
    [
        None,
        {"mu1": vigrad.PathGradient(), "mu2": vigrad.PathGradient()},
        {"mu1": vigrad.Score(), "mu2": vigrad.Score()},
        {"mu1": vigrad.Score(), "mu2": vigrad.PathGradient()},
        lambda site: vigrad.PathGradient() if site["name"] == "mu2" else None,
    ],
    ids=["reparam-default", "path", "score", "score+path", "callable"],
)
def test_gaussian_elbo_gradient_unbiased(estimators):
    assert z_score("gauss", estimators) < THRESHOLD


def test_gaussian_elbo_gradient_unbiased_with_particles_and_leave_one_out():
    estimators = {"mu1": vigrad.Score(), "mu2": vigrad.Score(vigrad.LeaveOneOut())}
    assert z_score("gauss", estimators, num_particles=4) < THRESHOLD


@pytest.mark.parametrize("num_particles", [1, 3])
def test_discrete_elbo_score_unbiased_by_enumeration(num_particles):
    assert z_score("disc", None, num_particles=num_particles) < THRESHOLD


def test_mixed_continuous_discrete_unbiased():
    assert z_score("mix", None) < THRESHOLD
    assert z_score("mix", {"mu": vigrad.PathGradient()}, seed=1) < THRESHOLD


def test_exact_references_match_numpyro_elbo():
    """The closed forms are right: they agree with NumPyro's ELBO averaged over many samples."""
    for case in ("gauss", "disc"):
        model, guide, args, _, exact_fn = CASES[case]
        loss = numpyro.infer.Trace_ELBO(num_particles=200_000)
        # Compiled: NumPyro vectorises the particles but otherwise runs op by op.
        params = case_params(case)
        mc = jax.jit(loss.loss, static_argnums=(2, 3))(
            jax.random.key(3), params, model, guide, *args
        )
        assert abs(float(mc) - float(exact_fn(params))) < 0.05


# Negative controls: the same test must reject biased estimators.


def _own_signal_baseline() -> ControlVariate:
    """A baseline equal to (most of) the particle's own signal: depends on the sample, so biased."""
    return ControlVariate(lambda s: EmptyState(), lambda s, state: (0.9 * s, state))


@dataclasses.dataclass(frozen=True)
class _StopWholeLogQ(vigrad.PathGradient):
    """The STL pitfall: stopping the gradient of log q entirely, including its path through z."""

    def log_q(self, fn, value):
        return jax.lax.stop_gradient(fn.log_prob(value))


def test_negative_control_sample_dependent_baseline_is_rejected():
    estimators = {"k": vigrad.Score(_own_signal_baseline()), "z": vigrad.Score()}
    assert z_score("disc", estimators) > THRESHOLD


def test_negative_control_stopping_whole_log_q_is_rejected():
    estimators = {"mu1": _StopWholeLogQ(), "mu2": vigrad.Reparam()}
    assert z_score("gauss", estimators) > THRESHOLD


def test_path_gradient_variance_vanishes_at_the_posterior():
    """The conjugate Gaussian's guide at the exact posterior: STL's estimate is then exact."""
    posterior = conjugate_posterior(X)
    variances = {}
    for est in (vigrad.Reparam(), vigrad.PathGradient()):
        loss = vigrad.ELBO(estimators={"mu": est})
        fn = lambda key, p, loss=loss: loss.loss(key, p, conjugate_model, conjugate_guide, X)
        grads = gradient_samples(fn, posterior, jax.random.key(0), 2000)
        variances[type(est).__name__] = sum(float(np.var(g)) for g in jax.tree.leaves(grads))
    assert variances["Reparam"] > 1e-2
    assert variances["PathGradient"] < 1e-20


# An autoguide whose unpacked latents have batch dimensions outside any plate in the guide.
YH = jnp.array([1.0, -0.5, 2.0, 0.3])


def hier_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("J", y.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, 1.0))
        numpyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def hier_neg_elbo(p):
    """Closed form for the diagonal Gaussian guide over (mu, theta_1..4), in the autoguide's
    parameters (auto_loc, auto_scale); latents are unpacked in the order mu, theta."""
    m, s = p["auto_loc"], p["auto_scale"]
    c = -0.5 * jnp.log(2 * jnp.pi)
    elbo = c - 0.5 * (m[0] ** 2 + s[0] ** 2)
    elbo += jnp.sum(c - 0.5 * ((m[1:] - m[0]) ** 2 + s[1:] ** 2 + s[0] ** 2))
    elbo += jnp.sum(c - 0.5 * ((YH - m[1:]) ** 2 + s[1:] ** 2))
    return -(elbo + jnp.sum(0.5 * jnp.log(2 * jnp.pi * jnp.e) + jnp.log(s)))


HIER_PARAMS = {"auto_loc": jnp.array([0.3, 0.1, -0.2, 0.5, 0.0]), "auto_scale": 0.8 * jnp.ones(5)}


@pytest.fixture(scope="module")
def hier_guide():
    """One autoguide for the module: it builds its prototype on its first call."""
    guide = AutoDiagonalNormal(hier_model)
    # Compiled: run op by op, the prototype's initialisation costs seconds.
    jax.jit(lambda key: vigrad.ELBO().loss(key, HIER_PARAMS, hier_model, guide, YH))(
        jax.random.key(0)
    )
    return guide


@pytest.mark.parametrize("num_particles", [1, 4])
def test_score_on_an_autoguide_latent_vector_is_unbiased(num_particles, hier_guide):
    loss = vigrad.ELBO(num_particles, estimators={"_auto_latent": vigrad.Score()})
    fn = lambda key, p: loss.loss(key, p, hier_model, hier_guide, YH)
    grads = gradient_samples(fn, HIER_PARAMS, jax.random.key(1), M)
    exact = jax.jit(jax.grad(hier_neg_elbo))(HIER_PARAMS)
    assert max_abs_z(grads, exact) < THRESHOLD
