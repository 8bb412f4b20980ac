"""Objectives as programs: user-written programs (IWHVI, SIR, wake-sleep, branching), measure-valued
derivatives, smooth Bernoulli log densities at zero logits and the shipped checker, each against
an exact gradient with a negative control that the same test rejects.

The estimator x objective matrix is in test_program_matrix.py."""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from test_hvi import HMODEL, iwhvi_one_inner, neg_grad
from test_hvi import guide as hvi_guide
from test_hvi import params as hvi_params
from test_objectives_unbiased import (
    CONT,
    DISC,
    X,
    Y,
    cont_guide,
    cont_model,
    disc_guide,
    disc_model,
    exact_by_enumeration,
    exact_by_quadrature,
    exact_enumeration_gradient,
    exact_quadrature_gradient,
    exact_rws_loss_gradient,
)
from unbiased import THRESHOLD, gradient_samples, max_abs_z

import vigrad
from vigrad.estimators.log_prob import log_prob

M = 20_000
stop = jax.lax.stop_gradient


def z_against(objective, model, guide, params, exact, *args, seed=0, num=M):
    loss = lambda key, p: objective.loss(key, p, model, guide, *args)
    return max_abs_z(gradient_samples(loss, params, jax.random.key(seed), num), exact)


# User-written hierarchical VI: IWHVI with one inner draw, as a user would write it.


@vigrad.program
def user_iwhvi(p):
    draw = p.sample(p.guide)
    latents = p.score(HMODEL.model, draw.values, *p.args)
    u0 = {n: v for n, v in draw.values.items() if n not in latents.values}
    log_r0 = p.score(HMODEL.reverse, u0, latents.values, *p.args).log_prob

    def inner(p):
        u = p.sample(HMODEL.reverse, latents.values, *p.args)
        return p.score(p.guide, {**latents.values, **u.values}).log_prob - u.log_prob

    terms = jnp.concatenate([(draw.log_prob - log_r0)[None], p.particles(1, inner)])
    return latents.log_prob - vigrad.log_mean_exp(terms)


def test_user_written_iwhvi_unbiased():
    p = hvi_params()
    exact = neg_grad(jax.jit(iwhvi_one_inner), p)
    assert z_against(user_iwhvi, HMODEL, hvi_guide, p, exact, 1.3) < THRESHOLD


# A SIR guide: K proposal particles, one resampled; its ELBO is the IWELBO.

K = 3


@vigrad.program
def sir_elbo(p):
    proposals = p.particles(K)
    j = jax.random.categorical(p.key(), stop(proposals.log_w))
    log_q_hat = proposals.log_p[j] - vigrad.log_mean_exp(proposals.log_w)
    return proposals.log_p[j] - log_q_hat


def test_sir_guide_unbiased_for_the_iwelbo():
    exact = exact_enumeration_gradient(vigrad.log_mean_exp, K)
    assert z_against(sir_elbo, disc_model, disc_guide, DISC, exact, Y) < THRESHOLD


# A wake-sleep pair written by a user, against the built-in RWS's exact expectation.


@vigrad.program
def wake_sleep(p):
    particles = p.particles(2, fixed=True)
    w = jax.nn.softmax(stop(particles.log_w))
    p_wake = jnp.sum(w * p.rescore(particles, stop="guide").log_p)
    q_wake = jnp.sum(w * p.rescore(particles, stop="model").log_q)
    return vigrad.Estimate(vigrad.log_mean_exp(particles.log_w), p_wake + q_wake)


def test_user_wake_sleep_matches_its_expectation():
    exact = exact_rws_loss_gradient()
    assert z_against(wake_sleep, cont_model, cont_guide, CONT, exact, X, seed=7) < THRESHOLD


# Branching on a discrete draw with lax.cond; the choice's logit starts at exactly 0.


def choice():
    return numpyro.sample("c", dist.Bernoulli(logits=numpyro.param("a", 0.0)))


@vigrad.program
def iwelbo_or_elbo(p):
    log_w = p.particles(2).log_w
    c = p.sample(choice).values["c"]
    return jax.lax.cond(c > 0, vigrad.log_mean_exp, jnp.mean, log_w)


def test_program_branching_on_a_discrete_draw_unbiased():
    params = {**CONT, "a": jnp.array(0.0)}

    def expected(p):
        on = jax.nn.sigmoid(p["a"])
        iw, elbo = (-exact_by_quadrature(f)(p) for f in (vigrad.log_mean_exp, jnp.mean))
        return on * iw + (1 - on) * elbo

    exact = jax.tree.map(jnp.negative, jax.jit(jax.grad(expected))(params))
    assert z_against(iwelbo_or_elbo, cont_model, cont_guide, params, exact, X) < THRESHOLD


# Measure-valued derivatives.


def test_mvd_unbiased_in_the_elbo():
    objective = vigrad.ELBO(2, estimators={"k": vigrad.MVD(), "z": vigrad.MVD()})
    exact = exact_enumeration_gradient(jnp.mean, 1)
    assert z_against(objective, disc_model, disc_guide, DISC, exact, Y) < THRESHOLD


def test_mvd_refused_in_the_iwelbo_and_its_bias_detected():
    objective = vigrad.IWELBO(2, estimators={"k": vigrad.MVD()})
    with pytest.raises(vigrad.EstimatorError, match="MVD.*'k'.*IWELBO"):
        jax.eval_shape(lambda: objective.loss(jax.random.key(0), DISC, disc_model, disc_guide, Y))
    objective.check_unbiasedness = False
    exact = exact_enumeration_gradient(vigrad.log_mean_exp, 2)
    assert z_against(objective, disc_model, disc_guide, DISC, exact, Y) > THRESHOLD


def test_mvd_cannot_serve_continuous_sites():
    objective = vigrad.ELBO(estimators={"mu": vigrad.MVD()})
    with pytest.raises(vigrad.EstimatorError, match="MVD.*'mu'.*finite support"):
        jax.eval_shape(lambda: objective.loss(jax.random.key(0), CONT, cont_model, cont_guide, X))


# Bernoulli(logits=a).log_prob at a = 0: NumPyro's gradient is 0 or 1 there instead of -1/2 or 1/2.


def test_log_prob_smooth_at_zero_logits():
    for y, slope in ((0.0, -0.5), (1.0, 0.5)):
        grad = jax.grad(lambda a, y=y: log_prob(dist.Bernoulli(logits=a), y))(0.0)
        assert jnp.isclose(grad, slope)
        grad = jax.grad(lambda a, y=y: log_prob(dist.Binomial(3, logits=a), y))(0.0)
        assert jnp.isclose(grad, y - 1.5)
    a = jnp.array([-3.0, 0.0, 0.7])
    for d, v in (
        (dist.Bernoulli(logits=a), jnp.array([1.0, 0.0, 1.0])),
        (dist.Binomial(4, logits=a), jnp.array([0.0, 2.0, 4.0])),
    ):
        assert jnp.allclose(log_prob(d, v), d.log_prob(v))


def test_score_and_mvd_at_zero_logits_unbiased():
    zero = {**DISC, "a0": jnp.array(0.0), "a1": jnp.array(0.0)}
    exact = jax.jit(jax.grad(exact_by_enumeration(jnp.mean, 1)))(zero)
    for estimator in (vigrad.Score(), vigrad.MVD()):
        objective = vigrad.ELBO(1, estimators={"z": estimator})
        assert z_against(objective, disc_model, disc_guide, zero, exact, Y) < THRESHOLD


# The shipped checker.


def test_check_unbiased_passes_a_valid_program_and_rejects_a_biased_one():
    good = vigrad.check_unbiased(vigrad.VIMCO(3), disc_model, disc_guide, Y, params=DISC)
    assert good.passed and good.reference_kind == "independent", str(good)
    # Compiled: the checker differentiates the reference, which op by op costs seconds.
    exact_fn = jax.jit(lambda p: -exact_by_quadrature(jnp.mean)(p))
    elbo = vigrad.ELBO(2, estimators={"mu": vigrad.PathGradient()})
    exact = vigrad.check_unbiased(elbo, cont_model, cont_guide, X, params=CONT, reference=exact_fn)
    assert exact.passed and exact.reference_kind == "exact"
    biased = vigrad.IWELBO(2, estimators={"mu": vigrad.PathGradient()})
    biased.check_unbiasedness = False
    bad = vigrad.check_unbiased(biased, cont_model, cont_guide, X, params=CONT)
    assert not bad.passed and bad.max_z > bad.threshold
    assert "BIASED" in str(bad) and "mu" not in bad.z and "m" in str(bad)


# Guide factors and observed guide sites belong to log q, as in NumPyro's ELBOs.


def test_guide_factor_is_part_of_log_q_as_in_numpyro():
    def model():
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=1.0)

    def guide():
        m = numpyro.param("m", 0.3)
        numpyro.sample("z", dist.Delta(m))
        numpyro.factor("tempering", -0.5 * m**2)

    params = {"m": jnp.array(0.3)}
    key = jax.random.key(0)
    ours = jax.value_and_grad(lambda p: vigrad.ELBO().loss(key, p, model, guide))(params)
    numpyro_elbo = numpyro.infer.Trace_ELBO()
    theirs = jax.value_and_grad(lambda p: numpyro_elbo.loss(key, p, model, guide))(params)
    assert jnp.allclose(ours[0], theirs[0]) and jnp.allclose(ours[1]["m"], theirs[1]["m"])


# Flow autoguides: log q from the intermediates recorded while sampling, no inverse pass.


@pytest.mark.parametrize(
    "autoguide", ["AutoBNAFNormal", pytest.param("AutoIAFNormal", marks=pytest.mark.slow)]
)
def test_flow_autoguides_need_no_inverse(autoguide):
    def model():
        z = numpyro.sample("z", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
        numpyro.sample("x", dist.Normal(z.sum(), 1.0), obs=0.7)

    guide = getattr(numpyro.infer.autoguide, autoguide)(model)
    svi = numpyro.infer.SVI(model, guide, optax.adam(1e-2), vigrad.ELBO())
    # Compiled: run op by op, the flow's initialisation alone costs seconds.
    p = jax.jit(lambda key: svi.get_params(svi.init(key)))(jax.random.key(0))
    n = 400
    keys = jax.random.split(jax.random.key(1), n)
    values = lambda elbo: jax.jit(jax.vmap(lambda k: elbo.loss(k, p, model, guide)))(keys)
    ours, theirs = values(vigrad.ELBO()), values(numpyro.infer.Trace_ELBO())
    assert abs(ours.mean() - theirs.mean()) < THRESHOLD * jnp.sqrt((ours.var() + theirs.var()) / n)
    path = vigrad.ELBO(estimators={"_auto_latent": vigrad.PathGradient()})
    if autoguide == "AutoBNAFNormal":
        with pytest.raises(vigrad.EstimatorError, match="'_auto_latent'.*invert.*Reparam"):
            jax.eval_shape(lambda: path.loss(keys[0], p, model, guide))


# Plate subsampling: each term's scale is applied once (score terms: to the cost, not to log q).

XS = jnp.array([0.3, 2.4, -0.5, 1.9])


def sub_model(x):
    theta = numpyro.param("theta", 0.2)
    with numpyro.plate("data", 4, subsample_size=2) as idx:
        z = numpyro.sample("z", dist.Bernoulli(0.5))
        numpyro.sample("x", dist.Normal(2.0 * z + theta, 1.0), obs=x[idx])


def sub_guide(x):
    a = numpyro.param("a", jnp.array([0.4, -0.3, 1.1, 0.0]))
    with numpyro.plate("data", 4, subsample_size=2) as idx:
        numpyro.sample("z", dist.Bernoulli(logits=a[idx]))


def test_score_terms_under_plate_subsampling_scaled_once():
    def full_elbo(p):
        total = 0.0
        for z in (0.0, 1.0):
            q = dist.Bernoulli(logits=p["a"])
            lq = log_prob(q, z)
            lp = dist.Bernoulli(0.5).log_prob(z) + dist.Normal(2.0 * z + p["theta"], 1.0).log_prob(
                XS
            )
            total = total + jnp.sum(jnp.exp(lq) * (lp - lq))
        return total

    params = {"theta": jnp.array(0.2), "a": jnp.array([0.4, -0.3, 1.1, 0.0])}
    exact = jax.tree.map(jnp.negative, jax.jit(jax.grad(full_elbo))(params))
    objective = vigrad.ELBO(2, estimators={"z": vigrad.Score()})
    assert z_against(objective, sub_model, sub_guide, params, exact, XS) < THRESHOLD


# numpyro.mutable sites (batch-norm statistics and the like) are updated as NumPyro's ELBOs do.


def counting_model():
    seen = numpyro.primitives.mutable("model_seen", {"n": jnp.array(0.0)})
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    seen["n"] = seen["n"] + 1.0
    numpyro.sample("x", dist.Normal(z, 1.0), obs=0.5)


def averaging_guide():
    stats = numpyro.primitives.mutable("guide_stats", {"n": jnp.array(0.0), "mean": jnp.array(0.0)})
    z = numpyro.sample("z", dist.Normal(numpyro.param("m", 0.0), 1.0))
    n = stats["n"] + 1.0
    stats["mean"] = stats["mean"] + (jax.lax.stop_gradient(z) - stats["mean"]) / n
    stats["n"] = n


def test_mutable_state_carried_by_svi_and_fit():
    svi = numpyro.infer.SVI(counting_model, averaging_guide, optax.adam(0.05), vigrad.ELBO())
    result = svi.run(jax.random.key(0), 20, progress_bar=False)
    mutable = result.state.mutable_state
    # SVI's init runs the programs once, then each of the 20 steps updates the counters once.
    assert float(mutable["guide_stats"]["n"]) == 21.0
    assert float(mutable["model_seen"]["n"]) == 21.0
    fitted = vigrad.fit(
        counting_model,
        averaging_guide,
        vigrad.ELBO(),
        optax.adam(0.05),
        20,
        jax.random.key(0),
        progress_bar=False,
    )
    stats = fitted.state["numpyro$mutable"]["guide_stats"]
    assert float(stats["n"]) == 21.0 and abs(float(stats["mean"])) < 2.0
    loss = lambda: vigrad.ELBO(2).loss(
        jax.random.key(0), {"m": 0.0}, counting_model, averaging_guide
    )
    with pytest.warns(UserWarning, match="mutable sites.*not updated with 2 particles"):
        jax.eval_shape(loss)  # warned while tracing


def test_per_site_losses_sum_to_the_loss_and_match_numpyro():
    def model():
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=1.0)

    def guide():
        numpyro.sample("z", dist.Delta(numpyro.param("m", 0.3)))

    key, params = jax.random.key(0), {"m": jnp.array(0.3)}
    ours = vigrad.ELBO(sum_sites=False).loss(key, params, model, guide)
    theirs = numpyro.infer.Trace_ELBO(sum_sites=False).loss(key, params, model, guide)
    assert set(ours) == set(theirs) == {"z", "x"}
    assert all(jnp.allclose(ours[n], theirs[n]) for n in ours)
    # On a random guide, the shares add up to the loss of the same draws.
    per_site = vigrad.ELBO(3, sum_sites=False).loss(key, CONT, cont_model, cont_guide, X)
    total = vigrad.ELBO(3).loss(key, CONT, cont_model, cont_guide, X)
    assert jnp.allclose(sum(per_site.values()), total)


# Analytic KL terms (NumPyro's TraceMeanField_ELBO) where the KL is known.


def test_analytic_kl_unbiased_and_refused_where_biased():
    exact = exact_quadrature_gradient(jnp.mean)
    objective = vigrad.ELBO(2, analytic_kl=True)
    assert z_against(objective, cont_model, cont_guide, CONT, exact, X) < THRESHOLD

    @vigrad.program
    def iwelbo_with_kl(p):
        return vigrad.log_mean_exp(p.particles(2, analytic_kl=True).log_w)

    with pytest.raises(vigrad.EstimatorError, match="Analytic KL.*biased in iwelbo_with_kl"):
        jax.eval_shape(
            lambda: iwelbo_with_kl.loss(jax.random.key(0), CONT, cont_model, cont_guide, X)
        )

    def model():
        b = numpyro.sample("b", dist.Normal(0.0, 1.0))
        numpyro.sample("a", dist.Normal(b, 1.0))

    def guide_a_first():
        numpyro.sample("a", dist.Normal(numpyro.param("m", 0.0), 1.0))
        numpyro.sample("b", dist.Normal(0.0, 1.0))

    with pytest.raises(vigrad.EstimatorError, match="'a'.*depends on \\['b'\\].*after"):
        jax.eval_shape(lambda: objective.loss(jax.random.key(0), {"m": 0.0}, model, guide_a_first))


def test_primitives_inside_control_flow_are_a_clear_error():
    @vigrad.program
    def draws_in_a_branch(p):
        c = p.sample(choice).values["c"]
        return jax.lax.cond(c > 0, lambda: p.particles(2).log_w.mean(), lambda: 0.0)

    # Score-function sites drawn in the branch would need their terms outside it.
    with pytest.raises(vigrad.EstimatorError, match="inside JAX control flow.*Draw first"):
        draws_in_a_branch.loss(jax.random.key(0), {**DISC, "a": 0.0}, disc_model, disc_guide, Y)
