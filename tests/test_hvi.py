"""Hierarchical VI objectives (HVI, IWHVI, DIWHVI) against exact gradients, with negative controls.

The guide is hierarchical and Gaussian: ``u ~ N(mu, su)``, ``z | u ~ N(u, sz)``, so its marginal is
``N(mu, sqrt(su^2 + sz^2))`` and the reverse model ``r(u | z) = N(a z + b, sr)`` can be the exact
conditional. Exact answers:

* HVI, any ``r``: closed form (Gaussian expectations).
* IWHVI with ``M = 1``, any ``r``: Gauss-Hermite quadrature over the three standard normal draws.
* At ``r = q(u | z)`` every ratio ``q(z, u_m) / r(u_m | z)`` is ``q(z)``, so IWHVI touches the
  marginal ELBO and DIWHVI the marginal IWELBO from below: their gradient in the guide parameters is
  the marginal bound's, and their gradient in ``r``'s parameters is zero.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpy.polynomial.hermite_e import hermegauss
from unbiased import THRESHOLD, gradient_samples, max_abs_z, max_two_sample_z

import vigrad
from vigrad.objectives.hvi import DIWHVI, HVI, IWHVI, with_reverse

M = 10_000
# Negative controls are far off (|z| of 25 to 120 at M = 20 000), so fewer draws reject them.
M_CONTROL = 3_000
X = 1.3
LOG2PI = jnp.log(2 * jnp.pi)
GUIDE = {"mu": 0.4, "log_su": -0.2, "log_sz": -0.6}
REVERSE = {"a": 0.5, "b": 0.1, "log_sr": -0.5}


def model(x):
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    numpyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide(x):
    mu = numpyro.param("mu", 0.0)
    su = jnp.exp(numpyro.param("log_su", 0.0))
    sz = jnp.exp(numpyro.param("log_sz", 0.0))
    u = numpyro.sample("u", dist.Normal(mu, su))
    numpyro.sample("z", dist.Normal(u, sz))


def reverse(latents, x):
    a, b = numpyro.param("a", 0.0), numpyro.param("b", 0.0)
    sr = jnp.exp(numpyro.param("log_sr", 0.0))
    numpyro.sample("u", dist.Normal(a * latents["z"] + b, sr))


HMODEL = with_reverse(model, reverse)


def params(g=GUIDE, r=REVERSE):
    return jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), {**g, **r})


def exact_conditional(g):
    """Reverse parameters of ``q(u | z)`` for guide parameters ``g``."""
    su2, sz2 = jnp.exp(2 * g["log_su"]), jnp.exp(2 * g["log_sz"])
    k = su2 / (su2 + sz2)
    return {"a": k, "b": g["mu"] * (1 - k), "log_sr": 0.5 * jnp.log(su2 * sz2 / (su2 + sz2))}


def log_norm(v, m, s):
    return -0.5 * LOG2PI - jnp.log(s) - 0.5 * ((v - m) / s) ** 2


def log_p(z):
    return log_norm(z, 0.0, 1.0) + log_norm(X, z, 1.0)


def marginal_elbo(p):
    s2 = jnp.exp(2 * p["log_su"]) + jnp.exp(2 * p["log_sz"])
    e_log_p = -LOG2PI - 0.5 * (p["mu"] ** 2 + s2) - 0.5 * ((X - p["mu"]) ** 2 + s2)
    return e_log_p + 0.5 * (LOG2PI + 1 + jnp.log(s2))


def hvi_bound(p):
    su, sz, sr = jnp.exp(p["log_su"]), jnp.exp(p["log_sz"]), jnp.exp(p["log_sr"])
    s2 = su**2 + sz**2
    e_log_p = -LOG2PI - 0.5 * (p["mu"] ** 2 + s2) - 0.5 * ((X - p["mu"]) ** 2 + s2)
    a, b = p["a"], p["b"]
    sq = (1 - a) ** 2 * su**2 + a**2 * sz**2 + ((1 - a) * p["mu"] - b) ** 2
    e_log_r = -0.5 * LOG2PI - jnp.log(sr) - sq / (2 * sr**2)
    entropy = LOG2PI + 1 + jnp.log(su) + jnp.log(sz)
    return e_log_p + e_log_r + entropy


def grid(d, num_nodes=30):
    """Gauss-Hermite nodes and weights for ``d`` independent standard normals."""
    nodes, weights = hermegauss(num_nodes)
    weights = weights / np.sqrt(2 * np.pi)
    e = np.stack(np.meshgrid(*([nodes] * d), indexing="ij"), -1).reshape(-1, d)
    w = np.prod(np.stack(np.meshgrid(*([weights] * d), indexing="ij"), -1).reshape(-1, d), -1)
    return jnp.asarray(e), jnp.asarray(w)


def iwhvi_one_inner(p, num_nodes=30):
    """IWHVI with M = 1 by quadrature over (u_0 noise, z noise, u_1 noise)."""
    e, w = grid(3, num_nodes)
    su, sz, sr = jnp.exp(p["log_su"]), jnp.exp(p["log_sz"]), jnp.exp(p["log_sr"])
    u0 = p["mu"] + su * e[:, 0]
    z = u0 + sz * e[:, 1]
    u1 = p["a"] * z + p["b"] + sr * e[:, 2]

    def ratio(u):
        lq = log_norm(u, p["mu"], su) + log_norm(z, u, sz)
        return lq - log_norm(u, p["a"] * z + p["b"], sr)

    log_q_hat = jnp.logaddexp(ratio(u0), ratio(u1)) - jnp.log(2.0)
    return jnp.sum(w * (log_p(z) - log_q_hat))


def marginal_iwelbo2(p):
    """IWELBO with K = 2 under the marginal guide, by quadrature."""
    e, w = grid(2)
    s = jnp.sqrt(jnp.exp(2 * p["log_su"]) + jnp.exp(2 * p["log_sz"]))
    z = p["mu"] + s * e
    log_w = log_p(z) - log_norm(z, p["mu"], s)
    return jnp.sum(w * (jax.nn.logsumexp(log_w, axis=1) - jnp.log(2.0)))


def stopped_latents(num_inner, num_particles=1, reduce=jnp.mean):
    """Negative control, written as a user program: the marginal estimate of log q(z) evaluated at
    latents whose path is cut (a plausible mistake), inside IWHVI's or DIWHVI's outer average."""

    def particle(p):
        draw = p.sample(p.guide)
        latents = p.score(HMODEL.model, draw.values, *p.args)
        z = jax.tree.map(jax.lax.stop_gradient, latents.values)
        u0 = {n: v for n, v in draw.values.items() if n not in z}

        def inner(p):
            u = p.sample(HMODEL.reverse, z, *p.args)
            return p.score(p.guide, {**z, **u.values}).log_prob - u.log_prob

        first = (
            p.score(p.guide, {**z, **u0}).log_prob
            - p.score(HMODEL.reverse, u0, z, *p.args).log_prob
        )
        terms = jnp.concatenate([first[None], p.particles(num_inner, inner)])
        return latents.log_prob - vigrad.log_mean_exp(terms)

    return vigrad.program(lambda p: reduce(p.particles(num_particles, particle)))


StoppedLatents = lambda num_inner: stopped_latents(num_inner)
StoppedLatentsD = lambda num_inner, num_particles: stopped_latents(
    num_inner, num_particles, vigrad.log_mean_exp
)


def samples(objective, p, seed=0, hmodel=HMODEL, num=M):
    loss = lambda key, q: objective.loss(key, q, hmodel, guide, X)
    return gradient_samples(loss, p, jax.random.key(seed), num)


def z_score(objective, p, exact, seed=0, hmodel=HMODEL, num=M):
    return max_abs_z(samples(objective, p, seed, hmodel, num), exact)


@functools.cache
def hvi_samples():
    """HVI's M gradient estimates at ``params()`` (seed 0), drawn once for the two tests using them."""
    return samples(HVI(), params())


@functools.cache
def compiled_neg_grad(fn):
    """The exact (negative) gradient of ``fn``, compiled once per function rather than traced op by
    op, and shared by the tests that compare against it."""
    return jax.jit(lambda p: jax.tree.map(lambda g: -g, jax.grad(fn)(p)))


def neg_grad(fn, p):
    return compiled_neg_grad(fn)(p)


def test_quadrature_converged():
    p = params()
    quadrature = jax.jit(iwhvi_one_inner, static_argnums=1)
    assert abs(float(quadrature(p, 40) - quadrature(p))) < 1e-8
    # At the exact reverse model the quadrature recovers the marginal ELBO.
    g = params(r=exact_conditional(GUIDE))
    assert np.isclose(float(quadrature(g)), float(marginal_elbo(g)), atol=1e-8)


@pytest.mark.parametrize(
    "estimators, k",
    [
        (None, 1),
        ({"z": vigrad.PathGradient(), "u": vigrad.PathGradient()}, 1),
        ({"z": vigrad.Score()}, 4),
    ],
    ids=["reparam", "path", "score-z-loo"],
)
def test_hvi_unbiased(estimators, k):
    p = params()
    exact = neg_grad(hvi_bound, p)
    if estimators is None and k == 1:
        assert max_abs_z(hvi_samples(), exact) < THRESHOLD
    else:
        assert z_score(HVI(num_particles=k, estimators=estimators), p, exact) < THRESHOLD


def test_hvi_rejects_joint_entropy_control():
    """The same test rejects the guide's joint density without the reverse model."""
    p = params()

    def joint_only(latents, x):
        numpyro.param("a", 0.0), numpyro.param("b", 0.0), numpyro.param("log_sr", 0.0)
        numpyro.sample("u", dist.Normal(0.0, 1.0).mask(False))

    exact = neg_grad(hvi_bound, p)
    assert (
        z_score(HVI(), p, exact, hmodel=with_reverse(model, joint_only), num=M_CONTROL) > THRESHOLD
    )


def test_iwhvi_unbiased_against_quadrature():
    p = params()
    exact = neg_grad(iwhvi_one_inner, p)
    assert z_score(IWHVI(num_inner=1), p, exact) < THRESHOLD


def test_iwhvi_score_site_unbiased():
    p = params()
    exact = neg_grad(iwhvi_one_inner, p)
    objective = IWHVI(num_inner=1, num_particles=4, estimators={"z": vigrad.Score()})
    assert z_score(objective, p, exact) < THRESHOLD


def test_iwhvi_negative_control_rejected():
    p = params()
    exact = neg_grad(iwhvi_one_inner, p)
    assert z_score(StoppedLatents(num_inner=1), p, exact, num=M_CONTROL) > THRESHOLD


def test_iwhvi_touches_marginal_elbo_at_exact_reverse():
    p = params(r=exact_conditional(GUIDE))
    exact = {**neg_grad(marginal_elbo, p), **{n: 0.0 for n in REVERSE}}
    assert z_score(IWHVI(num_inner=3), p, exact) < THRESHOLD
    assert z_score(StoppedLatents(num_inner=3), p, exact, num=M_CONTROL) > THRESHOLD


def test_diwhvi_touches_marginal_iwelbo_at_exact_reverse():
    p = params(r=exact_conditional(GUIDE))
    exact = {**neg_grad(marginal_iwelbo2, p), **{n: 0.0 for n in REVERSE}}
    assert z_score(DIWHVI(num_inner=2, num_particles=2), p, exact) < THRESHOLD
    control = StoppedLatentsD(num_inner=2, num_particles=2)
    assert z_score(control, p, exact, num=M_CONTROL) > THRESHOLD


def test_iwhvi_without_inner_samples_is_hvi():
    """The same estimator in distribution: the mean gradients agree (two-sample z-test)."""
    iwhvi = samples(IWHVI(num_inner=0), params(), seed=1)
    assert max_two_sample_z(iwhvi, hvi_samples()) < THRESHOLD


def test_bounds_ordered_on_average():
    """E[HVI] <= E[IWHVI_M] <= ELBO of the marginal guide, at a reverse model away from q(u | z)."""
    p = params(r={"a": 0.0, "b": -0.5, "log_sr": 0.3})
    keys = jax.random.split(jax.random.key(4), 2000)
    value = lambda obj: (
        -float(jnp.mean(jax.jit(jax.vmap(lambda k: obj.loss(k, p, HMODEL, guide, X)))(keys)))
    )
    hvi, iwhvi = value(HVI()), value(IWHVI(num_inner=8))
    assert hvi < iwhvi < float(marginal_elbo(p))
    assert np.isclose(hvi, float(hvi_bound(p)), atol=0.08)


def test_errors():
    p = params()
    key = jax.random.key(0)
    with pytest.raises(vigrad.ModelGuideMismatchError, match="with_reverse"):
        jax.eval_shape(lambda: IWHVI().loss(key, p, model, guide, X))
    with pytest.raises(vigrad.ModelGuideMismatchError, match="with_reverse"):
        jax.eval_shape(lambda: HVI().loss(key, p, model, guide, X))
    with pytest.raises(vigrad.EstimatorError, match="PathGradient.*site 'z'.*IWHVI"):
        jax.eval_shape(
            lambda: IWHVI(estimators={"z": vigrad.PathGradient()}).loss(key, p, HMODEL, guide, X)
        )

    def discrete_reverse(latents, x):
        numpyro.sample("u", dist.Laplace(latents["z"], 1.0).mask(True))
        numpyro.sample("w", dist.Bernoulli(0.5))

    with pytest.raises(vigrad.ModelGuideMismatchError, match="'w' has no value"):
        jax.eval_shape(
            lambda: IWHVI().loss(key, p, with_reverse(model, discrete_reverse), guide, X)
        )
    with pytest.raises(ValueError, match="num_inner"):
        IWHVI(num_inner=-1)


def test_reverse_parameters_found_by_svi_and_trained():
    """The paired model exposes the reverse model's parameters to numpyro.infer.SVI."""
    svi = numpyro.infer.SVI(HMODEL, guide, optax.adam(0.05), IWHVI(num_inner=2))
    state = svi.init(jax.random.key(0), X)
    assert set(svi.get_params(state)) == set(GUIDE) | set(REVERSE)
    before = svi.get_params(state)
    state, _ = jax.jit(svi.update)(state, X)
    after = svi.get_params(state)
    assert all(float(after[n]) != float(before[n]) for n in REVERSE)


def test_unpaired_auxiliary_sites_are_errors():
    p = params()
    key = jax.random.key(0)

    def guide_with_extra(x):
        numpyro.sample("w", dist.Normal(0.0, 1.0))
        guide(x)

    for objective in (HVI(), IWHVI(num_inner=1)):
        with pytest.raises(vigrad.ModelGuideMismatchError, match="'w'.*reverse model"):
            jax.eval_shape(lambda o=objective: o.loss(key, p, HMODEL, guide_with_extra, X))

    def reverse_with_extra(latents, x):
        reverse(latents, x)
        numpyro.sample("v", dist.Normal(0.0, 1.0))

    with pytest.raises(vigrad.ModelGuideMismatchError, match="'v'"):
        jax.eval_shape(
            lambda: IWHVI(num_inner=1).loss(
                key, p, with_reverse(model, reverse_with_extra), guide, X
            )
        )
