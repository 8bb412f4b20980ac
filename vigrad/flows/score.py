"""The forward score recursion: a flow sample together with the score of the flow at that sample.

For a flow ``x = T_L o ... o T_1(z)`` with ``z ~ q_0``, the path gradient of the reverse KL needs the
score ``s_L = grad_x log q(x)`` at the sample. Vaitl, Winkler, Richter & Kessel ("Fast and unified
path gradient estimators for normalizing flows", ICLR 2024) carry it forward with the sample,
layer by layer, instead of inverting the flow and differentiating ``log q``:

    s_0     = grad_z log q_0(z)
    s_{l+1} = J_l^{-T} (s_l - grad_{x_l} log|det J_l(x_l)|)

Every ``s_l`` is a constant for parameter gradients (``stop_gradient``). How ``J_l^{-T}`` is applied
depends on the layer (the rules below, chosen by type):

* elementwise bijections (``Affine``, ``Loc``, ``Scale``, ``Exp``, ``Tanh``, ...): a division by the
  diagonal Jacobian;
* coupling layers ``y_b = f(x_b; c(x_a))``, ``y_a = x_a``, with any scalar transformer ``f`` (affine,
  rational-quadratic spline, ...): ``u_b = (s_b - d/dx_b log f') / f'`` and
  ``u_a = s_a - grad_{x_a} [sum log f' + <u_b, y_b>]`` at fixed ``x_b``, one vector-Jacobian product
  through the conditioner whose forward pass is the sampling pass itself;
* permutations and flips: the same permutation of the score;
* masked autoregressive layers (:mod:`vigrad.flows.autoregressive`): in their sequential
  direction one vector-Jacobian product through the parallel pass at the output; in their
  one-pass direction a back substitution through the conditioner's first layer, without
  forming the ``d x d`` Jacobian;
* triangular affine layers: the Jacobian (a parameter) and one linear solve;
* any other bijection: the local inverse,
  ``s_{l+1} = VJP(T_l^{-1}, x_{l+1})(s_l) + grad log|det J_{T_l^{-1}}(x_{l+1})|``, one pass through
  the layer's inverse.

``Chain``, ``Scan`` (with ``lax.scan``) and ``Invert`` of all of these are followed structurally.
New bijection types get a rule with :func:`register_score_rule`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import paramax
from flowjax.bijections import (
    Affine,
    Chain,
    Coupling,
    Exp,
    Flip,
    Identity,
    Invert,
    Loc,
    MaskedAutoregressive,
    Permute,
    Scale,
    Scan,
    SoftPlus,
    Tanh,
    TriangularAffine,
)
from flowjax.bijections.bijection import AbstractBijection
from flowjax.distributions import AbstractDistribution, AbstractTransformed

from vigrad.flows.autoregressive import dense_jacobian_rule, masked_autoregressive_rule

stop = jax.lax.stop_gradient

ScoreRule = Callable[[Any, jax.Array, jax.Array, bool], tuple[jax.Array, jax.Array, jax.Array]]
"""``rule(bijection, x, s, inverse) -> (y, log_det, s_y)``: the layer's output ``y`` (differentiable in
the parameters and in ``x``), its log-determinant, and the stopped score at ``y``. With ``inverse``
the rule applies the inverse of ``bijection``."""

_RULES: dict[type, ScoreRule] = {}


def register_score_rule(bijection_type: type, rule: ScoreRule) -> None:
    """Use ``rule`` to carry the score through bijections of ``bijection_type`` (and subclasses)."""
    _RULES[bijection_type] = rule


def _apply(bijection: Any, x: jax.Array, inverse: bool) -> tuple[jax.Array, jax.Array]:
    if inverse:
        return bijection.inverse_and_log_det(x)
    return bijection.transform_and_log_det(x)


def transform_and_score(
    bijection: AbstractBijection, x: jax.Array, score: jax.Array, inverse: bool = False
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Push a point and the score of its density through a bijection.

    Args:
        bijection: a flowjax bijection (unconditional), wrapped parameters allowed.
        x: ``[*shape]`` a point, differentiable in whatever it depends on.
        score: ``[*shape]`` the score of the density of ``x`` at ``x``.
        inverse: apply the inverse of ``bijection`` instead.

    Returns:
        ``(y, log_det, score_y)``: the image (its gradient paths kept), ``log|det dy/dx|``, and the
        stopped score of the pushed-forward density at ``y``.
    """
    bijection = paramax.unwrap(bijection)
    return _dispatch(bijection, x, stop(score), inverse)


def _dispatch(bijection: Any, x: jax.Array, s: jax.Array, inverse: bool):
    for cls in type(bijection).__mro__:
        if cls in _RULES:
            return _RULES[cls](bijection, x, s, inverse)
    return local_inverse_rule(bijection, x, s, inverse)


def local_inverse_rule(bijection: Any, x: jax.Array, s: jax.Array, inverse: bool):
    """The generic rule: one vector-Jacobian product through the layer's inverse at the output."""
    y, log_det = _apply(bijection, x, inverse)
    (_, log_det_inv), vjp = jax.vjp(lambda y_: _apply(bijection, y_, not inverse), stop(y))
    (s_y,) = vjp((s, jnp.ones_like(log_det_inv)))
    return y, log_det, stop(s_y)


def _chain_rule(chain: Chain, x, s, inverse):
    layers = reversed(chain.bijections) if inverse else chain.bijections
    total = jnp.zeros(())
    for layer in layers:
        x, log_det, s = _dispatch(layer, x, s, inverse)
        total = total + jnp.sum(log_det)
    return x, total, s


def _scan_rule(scan: Scan, x, s, inverse):
    arrays, static = eqx.partition(scan.bijection, eqx.is_array)

    def step(carry, layer_arrays):
        x, total, s = carry
        layer = eqx.combine(layer_arrays, static)
        x, log_det, s = _dispatch(layer, x, s, inverse)
        return (x, total + jnp.sum(log_det), s), None

    (y, total, s_y), _ = jax.lax.scan(step, (x, jnp.zeros(()), s), arrays, reverse=inverse)
    return y, total, s_y


def _invert_rule(invert: Invert, x, s, inverse):
    return _dispatch(invert.bijection, x, s, not inverse)


def _elementwise_rule(bijection: Any, x, s, inverse):
    # The Jacobian is diagonal: f' by one forward-mode pass, grad log|f'| by one reverse pass.
    fn = lambda x_: _apply(bijection, x_, inverse)
    (y, log_det), (dy, _) = jax.jvp(fn, (x,), (jnp.ones_like(x),))
    grad_log_det = jax.grad(lambda x_: jnp.sum(fn(x_)[1]))(stop(x))
    return y, log_det, stop((s - grad_log_det) / dy)


def _permute_rule(permute: Permute, x, s, inverse):
    index = permute.inverse_permutation if inverse else permute.permutation
    return x[index], jnp.zeros(()), s[index]


def _flip_rule(flip: Flip, x, s, inverse):
    return jnp.flip(x), jnp.zeros(()), jnp.flip(s)


def _identity_rule(identity: Identity, x, s, inverse):
    return x, jnp.zeros(()), s


def _coupling_rule(coupling: Coupling, x, s, inverse):
    if coupling.cond_shape is not None:
        raise ValueError("the score recursion supports unconditional coupling layers only")
    k = coupling.untransformed_dim
    x_a, x_b = x[:k], x[k:]
    s_a, s_b = s[:k], s[k:]
    n_b = x_b.shape[0]

    def transformer_params(x_a):
        return jnp.reshape(coupling.conditioner(x_a), (n_b, -1))

    def elementwise(x_b, params):
        one = lambda xi, pi: _apply(coupling.transformer_constructor(pi), xi, inverse)
        return jax.vmap(one)(x_b, params)

    # The conditioner runs once: its forward pass gives the sample, its VJP the score.
    params, vjp_params = jax.vjp(transformer_params, x_a)
    (y_b, log_det), (dy_b, dlog_det) = jax.jvp(
        lambda x_b: elementwise(x_b, params), (x_b,), (jnp.ones_like(x_b),)
    )
    u_b = stop((s_b - dlog_det) / dy_b)
    _, vjp_elementwise = jax.vjp(lambda p: elementwise(stop(x_b), p), stop(params))
    (cot_params,) = vjp_elementwise((u_b, jnp.ones_like(log_det)))
    (cot_a,) = vjp_params(cot_params)
    y = jnp.concatenate([x_a, y_b])
    s_y = jnp.concatenate([s_a - cot_a, u_b])
    return y, jnp.sum(log_det), stop(s_y)


for _cls in (Affine, Loc, Scale, Exp, Tanh, SoftPlus):
    register_score_rule(_cls, _elementwise_rule)
register_score_rule(Chain, _chain_rule)
register_score_rule(Scan, _scan_rule)
register_score_rule(Invert, _invert_rule)
register_score_rule(Permute, _permute_rule)
register_score_rule(Flip, _flip_rule)
register_score_rule(Identity, _identity_rule)
register_score_rule(Coupling, _coupling_rule)
register_score_rule(MaskedAutoregressive, masked_autoregressive_rule)
register_score_rule(TriangularAffine, dense_jacobian_rule)


def split_flow(flow: AbstractDistribution) -> tuple[AbstractDistribution, list[Any]]:
    """The innermost base distribution of a (possibly nested) flowjax transformed distribution
    and its bijections in sampling order, all unwrapped."""
    flow = paramax.unwrap(flow)
    bijections: list[Any] = []
    while isinstance(flow, AbstractTransformed):
        bijections.insert(0, flow.bijection)
        flow = flow.base_dist
    return flow, bijections


def base_score(base: AbstractDistribution, z: jax.Array) -> jax.Array:
    """``grad_z log q_0(z)`` with the base's parameters stopped."""
    stopped = jax.tree.map(stop, eqx.filter(base, eqx.is_inexact_array))
    base = eqx.combine(stopped, eqx.filter(base, eqx.is_inexact_array, inverse=True))
    return stop(jax.grad(lambda z_: base.log_prob(z_))(stop(z)))


def push_forward(
    flow: AbstractDistribution, z: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Push one base point ``z`` through the flow's bijections with the score recursion.

    Returns ``(x, log_q, score)``: the sample (differentiable in the parameters and in ``z``),
    ``log q(x)`` and the stopped score ``grad_x log q(x)``.
    """
    base, bijections = split_flow(flow)
    s = base_score(base, z)
    log_q = base.log_prob(z)
    x = z
    for bijection in bijections:
        x, log_det, s = _dispatch(bijection, x, s, False)
        log_q = log_q - jnp.sum(log_det)
    return x, log_q, s


def _typed_key(rng_key: jax.Array) -> jax.Array:
    # NumPyro passes raw ``uint32[2]`` keys; flowjax wants typed keys.
    if jax.dtypes.issubdtype(rng_key.dtype, jax.dtypes.prng_key):
        return rng_key
    return jax.random.wrap_key_data(rng_key)


def sample_and_score(
    flow: AbstractDistribution, rng_key: jax.Array, sample_shape: tuple[int, ...] = ()
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Samples of a flowjax flow with ``log q`` and the score, by the forward recursion only.

    The base samples are drawn as flowjax draws them, so ``x`` equals
    ``flow.sample(rng_key, sample_shape)``.

    Returns:
        ``(x, log_q, score)`` of shapes ``[*sample_shape, *flow.shape]``, ``[*sample_shape]`` and
        ``[*sample_shape, *flow.shape]``.
    """
    flow = paramax.unwrap(flow)
    if flow.cond_shape is not None:
        raise ValueError("the score recursion supports unconditional flows only")
    base, _ = split_flow(flow)
    keys = flow._get_sample_keys(_typed_key(rng_key), tuple(sample_shape), None)
    one = lambda key: push_forward(flow, base._sample(key))
    flat = jnp.reshape(keys, (-1,))
    out = jax.vmap(one)(flat) if sample_shape else one(keys)
    if not sample_shape:
        return out
    return jax.tree.map(lambda a: jnp.reshape(a, (*sample_shape, *a.shape[1:])), out)


def path_log_q(
    flow: AbstractDistribution, rng_key: jax.Array, sample_shape: tuple[int, ...] = ()
) -> tuple[jax.Array, jax.Array]:
    """Samples and a ``log q`` term whose parameter gradient is the path gradient.

    ``log_q = stop(log q(x)) + <stop(grad_x log q(x)), x - stop(x)>``: its value is ``log q(x)``
    and its gradient through ``x`` is that of ``log q_{stop(params)}(x(params))``, computed without
    an inverse pass. ``log_q`` has shape ``[*sample_shape]``.
    """
    x, log_q, s = sample_and_score(flow, rng_key, sample_shape)
    event_axes = tuple(range(len(sample_shape), x.ndim))
    return x, stop(log_q) + jnp.sum(s * (x - stop(x)), axis=event_axes)


def slow_score(flow: AbstractDistribution, x: jax.Array) -> jax.Array:
    """Reference score ``grad_x log q(x)`` by the inverse pass and reverse-mode autodiff."""
    return jax.grad(lambda x_: flow.log_prob(x_))(x)
