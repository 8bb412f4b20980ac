"""Flow guides: the fast score recursion against the slow path gradient, unbiasedness of the fast
reverse-KL and forward-KL path gradients, and the NumPyro guide and autoguide plumbing."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpyro
import numpyro.distributions as dist
import pytest
from flowjax.bijections import (
    Affine,
    Chain,
    Coupling,
    Exp,
    Flip,
    Invert,
    MaskedAutoregressive,
    Permute,
    RationalQuadraticSpline,
    TriangularAffine,
)
from flowjax.distributions import StandardNormal, Transformed
from flowjax.flows import coupling_flow, masked_autoregressive_flow
from jax.flatten_util import ravel_pytree

import vigrad
from tests.unbiased import THRESHOLD, max_abs_z
from vigrad.errors import EstimatorError
from vigrad.estimators.base import Draw
from vigrad.estimators.path import stop_parameters
from vigrad.flows import (
    AutoFlow,
    FlowPathGradient,
    flow_sample,
    forward_kl_path_loss,
    reverse_kl_path_loss,
    sample_and_score,
    slow_score,
)
from vigrad.flows.score import path_log_q

jax.config.update("jax_enable_x64", True)

D = 4
stop = jax.lax.stop_gradient


def _perturbed(flow, seed, size=0.2):
    """The flow with every trainable array moved off its (often trivial) initial value.

    Moved in one compiled call: op by op, every array shape is a compile of its own.
    """
    arrays, static = eqx.partition(flow, eqx.is_inexact_array)

    @jax.jit
    def move(arrays):
        flat, unravel = ravel_pytree(arrays)
        return unravel(flat + size * jr.normal(jr.key(seed), flat.shape, flat.dtype))

    return eqx.combine(move(arrays), static)


def _coupling(key, transformer, invert):
    return coupling_flow(
        key,
        base_dist=StandardNormal((D,)),
        transformer=transformer,
        flow_layers=2,
        nn_width=8,
        invert=invert,
    )


def _keys():
    return jr.split(jr.key(0), 8)


def _rqs():
    return RationalQuadraticSpline(knots=4, interval=3.0)


def _chain_of_every_layer():
    k = _keys()
    single_coupling = Coupling(
        k[6], transformer=Affine(), untransformed_dim=1, dim=D, nn_width=8, nn_depth=1
    )
    rqs_coupling = Coupling(
        k[0], transformer=_rqs(), untransformed_dim=2, dim=D, nn_width=8, nn_depth=1
    )
    mixed = Chain(
        [
            single_coupling,
            Permute(jnp.array([2, 0, 3, 1])),
            Invert(rqs_coupling),
            MaskedAutoregressive(k[7], transformer=Affine(), dim=D, nn_width=8, nn_depth=1),
            Flip((D,)),
            Invert(MaskedAutoregressive(k[1], transformer=Affine(), dim=D, nn_width=8, nn_depth=1)),
            Invert(TriangularAffine(jnp.zeros(D), jnp.eye(D))),
            Affine(jnp.ones(D), 2 * jnp.ones(D)),
            Exp((D,)),
        ]
    )
    return Transformed(StandardNormal((D,)), mixed)


def _maf(i, **kw):
    return masked_autoregressive_flow(
        _keys()[i], base_dist=StandardNormal((D,)), flow_layers=2, nn_width=8, **kw
    )


# name -> builder. Flows are built by the test that uses them: building them all at import costs
# seconds of op-by-op dispatch in every run, including runs that select none of them.
FLOWS = {
    "affine_coupling": lambda: _coupling(_keys()[0], None, invert=False),
    "affine_coupling_inverted": lambda: _coupling(_keys()[1], None, invert=True),
    "rqs_coupling": lambda: _coupling(_keys()[2], _rqs(), invert=False),
    "rqs_coupling_inverted": lambda: _coupling(_keys()[3], _rqs(), invert=True),
    "masked_autoregressive": lambda: _maf(4, invert=False),
    "masked_autoregressive_inverted": lambda: _maf(5, transformer=_rqs()),
    "masked_autoregressive_rqs": lambda: _maf(6, transformer=_rqs(), invert=False),
    "masked_autoregressive_affine_inverted": lambda: _maf(7, nn_depth=2),
    "chain_of_every_layer": _chain_of_every_layer,
}


def test_fast_path_gradient_equals_slow_mixed_chain():
    """Every layer type in one chain (coupling with affine and inverted spline transformers,
    autoregressive both ways, permutation, flip, inverted triangular affine, elementwise)."""
    _check_fast_equals_slow(FLOWS["chain_of_every_layer"](), num_keys=2)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FLOWS))
def test_fast_path_gradient_equals_slow(name):
    _check_fast_equals_slow(FLOWS[name](), num_keys=3)


def _check_fast_equals_slow(flow, num_keys):
    flow = _perturbed(flow, seed=1)
    arrays, static = eqx.partition(flow, eqx.is_inexact_array)
    keys = jr.split(jr.key(2), num_keys)
    log_p = lambda x: -0.5 * jnp.sum((x - 0.3) ** 2) - 0.1 * jnp.sum(x**4)

    def fast(arrays, key):
        x, log_q = path_log_q(eqx.combine(arrays, static), key)
        return log_q - log_p(x)

    def slow(arrays, key):
        x = eqx.combine(arrays, static).sample(key)
        return eqx.combine(stop(arrays), static).log_prob(x) - log_p(x)

    @jax.jit
    def compare(arrays, key):
        flow = eqx.combine(arrays, static)
        x, log_q, score = sample_and_score(flow, key)
        checks = (x, log_q, score, flow.sample(key), flow.log_prob(x), slow_score(flow, x))
        return jax.value_and_grad(fast)(arrays, key), jax.value_and_grad(slow)(arrays, key), checks

    for key in keys:
        (fv, fg), (sv, sg), (x, log_q, score, x_ref, log_q_ref, score_ref) = compare(arrays, key)
        assert jnp.allclose(fv, sv, atol=1e-8)
        for a, b in zip(jax.tree.leaves(fg), jax.tree.leaves(sg), strict=True):
            assert jnp.allclose(a, b, atol=1e-5, rtol=1e-5), float(jnp.max(jnp.abs(a - b)))
        assert jnp.allclose(x, x_ref, atol=1e-12)
        assert jnp.allclose(log_q, log_q_ref, atol=1e-8)
        assert jnp.allclose(score, score_ref, atol=1e-6)


def test_masked_autoregressive_score_without_the_jacobian():
    """The one-pass direction's back substitution (d = 7, two hidden layers, a spline
    transformer): the score equals the inverse-pass score."""
    layer = MaskedAutoregressive(
        jr.key(3),
        transformer=RationalQuadraticSpline(knots=4, interval=3.0),
        dim=7,
        nn_width=8,
        nn_depth=2,
    )
    flow = _perturbed(Transformed(StandardNormal((7,)), layer), seed=4)

    @eqx.filter_jit
    def scores(flow, key):
        x, _, score = sample_and_score(flow, key)
        return score, slow_score(flow, x)

    fast, slow = scores(flow, jr.key(5))
    assert jnp.allclose(fast, slow, atol=1e-9)


# --- unbiasedness against exact gradients: a linear flow on a Gaussian target ----------------

M = 2000
TARGET_MEAN = jnp.array([1.0, -0.5, 0.3])
_L = jnp.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [-0.3, 0.4, 0.5]])
TARGET_COV = _L @ _L.T


def _linear_flow():
    d = 3
    tri = TriangularAffine(
        jnp.array([0.2, 0.1, -0.1]), jnp.eye(d) + 0.2 * jnp.tril(jnp.ones((d, d)), -1)
    )
    bij = Chain(
        [tri, Permute(jnp.array([1, 2, 0])), Affine(jnp.zeros(d), jnp.array([0.7, 1.3, 0.9]))]
    )
    return Transformed(StandardNormal((d,)), bij)


def _gaussian_log_p(x):
    return dist.MultivariateNormal(TARGET_MEAN, TARGET_COV).log_prob(x)


def _moments(flow):
    """The linear flow's Gaussian: ``x = A z + b``."""
    _, bijections = vigrad.flows.score.split_flow(flow)
    (bij,) = bijections
    b = bij.transform(jnp.zeros(3))
    a = jax.jacfwd(bij.transform)(jnp.zeros(3))
    return b, a


def _exact_reverse_kl(flow):
    b, a = _moments(flow)
    prec = jnp.linalg.inv(TARGET_COV)
    e_log_p = _gaussian_log_p(b) - 0.5 * jnp.trace(prec @ a @ a.T)
    entropy = 1.5 * jnp.log(2 * jnp.pi * jnp.e) + jnp.linalg.slogdet(a)[1]
    return -e_log_p - entropy


def _exact_forward_kl(flow):
    b, a = _moments(flow)
    q = dist.MultivariateNormal(b, a @ a.T)
    p = dist.MultivariateNormal(TARGET_MEAN, TARGET_COV)
    return dist.kl_divergence(p, q)


@pytest.fixture(scope="module")
def linear_flow():
    # Built in one compiled call, as the exact gradients below are: op by op, each is dozens of
    # compiles.
    return eqx.partition(eqx.filter_jit(_linear_flow)(), eqx.is_inexact_array)


@pytest.fixture(scope="module")
def exact_gradients(linear_flow):
    arrays, static = linear_flow
    grad = lambda kl, a: jax.grad(lambda a_: kl(eqx.combine(a_, static)))(a)
    return jax.jit(
        lambda a: {"reverse": grad(_exact_reverse_kl, a), "forward": grad(_exact_forward_kl, a)}
    )(arrays)


def _estimates(loss, arrays, key):
    """[M, ...] gradients of ``loss(arrays, key, biased)`` for the estimator and for its negative
    control, from the same keys, in one compiled call."""
    keys = jr.split(key, M)
    grads = lambda k: {biased: jax.grad(loss)(arrays, k, biased) for biased in (False, True)}
    return jax.jit(jax.vmap(grads))(keys)


@pytest.fixture(scope="module")
def reverse_estimates(linear_flow):
    arrays, static = linear_flow

    def loss(arrays, key, biased):
        flow = eqx.combine(arrays, static)
        if biased:
            # Negative control: the whole log q stopped loses the entropy's path term.
            x = flow.sample(key)
            return stop(flow.log_prob(x)) - _gaussian_log_p(x)
        return reverse_kl_path_loss(flow, key, _gaussian_log_p, 1)

    return _estimates(loss, arrays, jr.key(11))


@pytest.mark.parametrize("biased", [False, True])
def test_reverse_kl_path_gradient_unbiased(reverse_estimates, exact_gradients, biased):
    z = max_abs_z(reverse_estimates[biased], exact_gradients["reverse"])
    assert (z > THRESHOLD) if biased else (z < THRESHOLD), z


@pytest.fixture(scope="module")
def forward_estimates(linear_flow):
    arrays, static = linear_flow

    def loss(arrays, key, biased):
        flow = eqx.combine(arrays, static)
        x = dist.MultivariateNormal(TARGET_MEAN, TARGET_COV).sample(key, (1,))
        if biased:
            # Negative control: the target's score left out.
            return forward_kl_path_loss(flow, x, target_score=jnp.zeros_like(x))
        return forward_kl_path_loss(flow, x, log_target=_gaussian_log_p)

    return _estimates(loss, arrays, jax.random.PRNGKey(12))


@pytest.mark.parametrize("biased", [False, True])
def test_forward_kl_path_gradient_unbiased(forward_estimates, exact_gradients, biased):
    z = max_abs_z(forward_estimates[biased], exact_gradients["forward"])
    assert (z > THRESHOLD) if biased else (z < THRESHOLD), z


def test_forward_kl_path_gradient_vanishes_at_the_target():
    # q = p exactly: every single-sample path gradient is zero (the ML gradient is not).
    @jax.jit
    def gradients(key):
        flow = Transformed(StandardNormal((3,)), TriangularAffine(TARGET_MEAN, _L))
        arrays, static = eqx.partition(flow, eqx.is_inexact_array)
        x = dist.MultivariateNormal(TARGET_MEAN, TARGET_COV).sample(key, (5,))
        path = lambda a: forward_kl_path_loss(eqx.combine(a, static), x, _gaussian_log_p)
        ml = lambda a: -jnp.mean(eqx.combine(a, static).log_prob(x))
        return jax.grad(path)(arrays), jax.grad(ml)(arrays)

    g, ml = gradients(jax.random.PRNGKey(0))
    assert max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(g)) < 1e-10
    assert max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(ml)) > 1e-2


# --- NumPyro plumbing ---------------------------------------------------------------------------


class _InversePass(vigrad.PathGradient):
    """The slow path gradient, spelled out: log q with stopped parameters at the sample."""

    def draw(self, fn, rng_key, sample_shape):
        value = self.sample(fn, rng_key, sample_shape)
        return Draw(value, log_q=stop_parameters(fn).log_prob(value))


def _model():
    numpyro.sample("x", dist.MultivariateNormal(TARGET_MEAN, TARGET_COV))


def test_flow_sample_site_fast_equals_path_gradient():
    flow3 = coupling_flow(
        jr.key(5), base_dist=StandardNormal((3,)), flow_layers=2, nn_width=8, invert=False
    )
    guide = lambda: flow_sample("x", flow3)
    init = numpyro.handlers.trace(numpyro.handlers.seed(guide, 0)).get_trace()["x_flow"]["value"]
    params = {"x_flow": init + 0.1 * jnp.sin(jnp.arange(init.size))}
    estimators = {"fast": FlowPathGradient(), "slow": _InversePass(), "reparam": vigrad.Reparam()}

    # The three estimators in one compiled call: they share the draws, and one compile is cheaper
    # than three.
    @jax.jit
    def value_and_grads(params):
        key = jax.random.PRNGKey(4)
        losses = {
            name: vigrad.ELBO(num_particles=3, estimators={"x": estimator})
            for name, estimator in estimators.items()
        }
        return {
            name: jax.value_and_grad(lambda p, loss=loss: loss.loss(key, p, _model, guide))(params)
            for name, loss in losses.items()
        }

    out = value_and_grads(params)
    (fv, fg), (sv, sg), (rv, rg) = out["fast"], out["slow"], out["reparam"]
    assert jnp.allclose(fv, sv, atol=1e-10) and jnp.allclose(fv, rv, atol=1e-10)
    assert jnp.allclose(fg["x_flow"], sg["x_flow"], atol=1e-7)
    assert not jnp.allclose(fg["x_flow"], rg["x_flow"], atol=1e-3)


def _constrained_model():
    s = numpyro.sample("s", dist.LogNormal(0.0, 0.5))
    numpyro.sample("m", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    numpyro.sample("y", dist.Normal(s, 1.0), obs=jnp.array([0.5, 1.5]))


def test_autoflow_fast_equals_path_gradient():
    small = lambda key, dim: coupling_flow(
        key, base_dist=StandardNormal((dim,)), flow_layers=2, nn_width=8, invert=False
    )
    guide = AutoFlow(_constrained_model, small, estimator=FlowPathGradient())
    slow_guide = AutoFlow(_constrained_model, small, estimator=_InversePass())
    key = jax.random.PRNGKey(0)
    traces = [
        numpyro.handlers.trace(numpyro.handlers.seed(g, 0)).get_trace() for g in (guide, slow_guide)
    ]
    params = {"auto_flow": traces[0]["auto_flow"]["value"]}
    loss = vigrad.ELBO(num_particles=2)
    # Both guides in one compiled call: one compile is cheaper than two.
    value_and_grad = lambda p, g: jax.value_and_grad(
        lambda p_: loss.loss(key, p_, _constrained_model, g)
    )(p)
    (fv, fg), (sv, sg) = jax.jit(
        lambda p: (value_and_grad(p, guide), value_and_grad(p, slow_guide))
    )(params)
    assert jnp.isfinite(fv) and jnp.allclose(fv, sv, atol=1e-10)
    assert jnp.allclose(fg["auto_flow"], sg["auto_flow"], atol=1e-7)
    post = guide.sample_posterior(key, params, sample_shape=(5,))
    assert post["s"].shape == (5,) and bool(jnp.all(post["s"] > 0))
    assert post["m"].shape == (5, 2)


def test_flow_path_gradient_rejects_non_flow_site():
    def guide():
        numpyro.sample("x", dist.Normal(jnp.zeros(3), 1.0).to_event(1))

    loss = vigrad.ELBO(estimators={"x": FlowPathGradient()})
    with pytest.raises(EstimatorError, match="FlowPathGradient.*'x'.*flow_sample"):
        loss.loss(jax.random.PRNGKey(0), {}, _model, guide)
