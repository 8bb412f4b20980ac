"""The score recursion through masked autoregressive layers, without forming their Jacobian.

flowjax's ``MaskedAutoregressive`` maps ``y_i = tau(x_i; c_i(x_{<i}))`` with a scalar transformer
``tau`` (affine, rational-quadratic spline, ...) whose parameters come from a masked MLP (MADE,
Germain et al. 2015), ``c(x) = W_out h(x) + b``, ``h`` the hidden layers. That direction is one
pass; its inverse is sequential (one conditioner pass per coordinate).

* Inverse direction (``Invert(MaskedAutoregressive)`` in a sampling chain, flowjax's default
  ``invert=True``): the layer's own inverse is the parallel pass, so the score comes from one
  vector-Jacobian product through it at the layer's output,
  ``s_y = J_tau(y)^T s + grad_y log|det J_tau(y)|`` (the local-inverse rule). The sample itself
  still needs the sequential pass.
* Forward direction (``invert=False``): ``s_y = J^{-T} (s - grad_x log|det J|)`` with
  ``J = D + L``, ``D = diag(d tau_i / d x_i)`` and ``L`` strictly lower triangular through the
  conditioner. Writing ``a = W_1 x + b_1`` for the first layer's pre-activations,
  ``L = U W_1`` with ``U[i] = sum_p (d tau_i / d c_ip) d c_ip / d a`` (``[d, width]``: each row
  contracts its own output block of ``W_out``, then one vector-Jacobian product back through the
  hidden layers, all rows at once). The masks make ``U[i, k] W_1[k, j]`` vanish unless
  ``i > j``, so ``J^T w = v`` is solved by back substitution on the running sum
  ``R_j = sum_{i > j} U[i] w_i`` (a ``width``-vector): ``w_j = (v_j - W_1[:, j] . R_j) / D_j``,
  ``d`` steps of ``O(width)`` work in a ``lax.scan``. No ``d x d`` matrix is formed; the cost is
  one conditioner pass, one forward and two reverse passes of the scalar transformer (which also
  give the layer's output its gradient: it is returned as its first-order expansion, exact for
  the one derivative the path gradient takes), one reverse pass through the hidden layers for
  all rows of ``U``, and ``O(d width)`` for the solve. (Rewrites of the loop measured slower
  within a training step on CPU, see ``benchmarks/flows/RESULTS.md``: triangular blocks inverted
  in parallel, two coordinates per step, rows of ``U`` formed inside the loop, and ``J`` formed
  by one matrix product with the loop carrying the partial sums of ``J^T w``.)
  ``grad_x log|det J| = grad log tau' + W_1^T (dh/da)^T W_out^T (d log tau' / d c)`` shares the
  same pass.

Conditional layers are not supported; a conditioner that is not flowjax's masked ``eqx.nn.MLP``
falls back to forming the Jacobian with forward-mode autodiff.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from flowjax.bijections import MaskedAutoregressive

stop = jax.lax.stop_gradient


def masked_autoregressive_rule(maf: MaskedAutoregressive, x, s, inverse):
    """Score rule for ``MaskedAutoregressive`` (see the module docstring)."""
    if maf.cond_shape is not None:
        raise ValueError("the score recursion supports unconditional autoregressive layers only")
    if inverse:
        return _inverse_direction(maf, x, s)
    mlp = maf.masked_autoregressive_mlp
    if not isinstance(mlp, eqx.nn.MLP) or getattr(mlp, "scan", False) or mlp.depth < 1:
        return dense_jacobian_rule(maf, x, s, inverse)
    return _forward_direction(maf, mlp, x, s)


def dense_jacobian_rule(bijection, x, s, inverse):
    """Score rule for a layer with a triangular Jacobian (``TriangularAffine``), or any layer whose
    Jacobian is cheap to form: ``dim`` forward-mode passes (batched), then one solve."""
    fn = lambda x_: (
        bijection.inverse_and_log_det(x_) if inverse else bijection.transform_and_log_det(x_)
    )
    y, log_det = fn(x)
    x0 = stop(x)
    jac = jax.jacfwd(lambda x_: fn(x_)[0])(x0)
    grad_log_det = jax.grad(lambda x_: jnp.sum(fn(x_)[1]))(x0)
    s_y = jnp.linalg.solve(stop(jac).T, s - grad_log_det)
    return y, log_det, stop(s_y)


def _inverse_direction(maf: MaskedAutoregressive, x, s):
    # The sequential pass gives the sample; the parallel pass at it gives the log-determinant and,
    # by one VJP, the score.
    y = maf.inverse(x)
    (_, log_det_forward), vjp = jax.vjp(maf.transform_and_log_det, y)
    (s_y,) = vjp((s, jnp.ones_like(log_det_forward)))
    return y, -log_det_forward, stop(s_y)


def _hidden(mlp: eqx.nn.MLP, a: jax.Array) -> jax.Array:
    """The MLP from its first layer's pre-activations to its last hidden layer (as
    ``eqx.nn.MLP.__call__`` computes it, activations possibly per unit)."""
    for i in range(mlp.depth):
        if i:
            a = mlp.layers[i](a)
        activation = jax.tree.map(lambda t, i=i: t[i] if eqx.is_array(t) else t, mlp.activation)
        a = eqx.filter_vmap(lambda f, u: f(u))(activation, a)
    return a


def _forward_direction(maf: MaskedAutoregressive, mlp: eqx.nn.MLP, x, s):
    first, last = mlp.layers[0], mlp.layers[-1]
    dim = x.shape[0]
    pre_hidden = first(x)
    hidden, vjp_hidden = jax.vjp(lambda a: _hidden(mlp, a), pre_hidden)
    out_activation = lambda u: eqx.filter_vmap(lambda f, v: f(v))(mlp.final_activation, u)
    pre_out = last(hidden)
    flat, d_out = jax.jvp(out_activation, (pre_out,), (jnp.ones_like(pre_out),))
    params = jnp.reshape(flat, (dim, -1))

    def elementwise(x_i, params_i):
        return maf.transformer_constructor(params_i).transform_and_log_det(x_i)

    # d tau / d(x, c) and d log tau' / d(x, c), per coordinate: one forward pass of the
    # transformer and two reverse passes, which also serve the training step's backward pass:
    # ``y`` and ``log_det`` are returned as their first-order expansions around the stopped point,
    # so their gradients are exact and cost an elementwise product (a spline's backward pass would
    # otherwise run a third time).
    (y0, log_det0), vjp_transformer = jax.vjp(jax.vmap(elementwise), stop(x), stop(params))
    diag, d_params = vjp_transformer((jnp.ones_like(y0), jnp.zeros_like(log_det0)))
    d_log_x, d_log_params = vjp_transformer((jnp.zeros_like(y0), jnp.ones_like(log_det0)))
    dx, d_flat = x - stop(x), params - stop(params)
    y = stop(y0) + diag * dx + jnp.sum(d_params * d_flat, axis=-1)
    log_det = stop(log_det0) + d_log_x * dx + jnp.sum(d_log_params * d_flat, axis=-1)
    d_out = jnp.reshape(d_out, (dim, -1))
    w_out = jnp.reshape(last.weight, (dim, -1, hidden.shape[0]))
    rows = jnp.einsum("ip,iph->ih", d_params * d_out, w_out)
    (left,) = jax.vmap(vjp_hidden)(rows)
    (log_det_hidden,) = vjp_hidden(jnp.einsum("ip,iph->h", d_log_params * d_out, w_out))
    grad_log_det = d_log_x + first.weight.T @ log_det_hidden
    s_y = _solve_transposed(diag, left, first.weight, s - grad_log_det)
    return y, jnp.sum(log_det), stop(s_y)


def _solve_transposed(diag: jax.Array, left: jax.Array, right: jax.Array, v: jax.Array):
    """``w`` with ``(diag(diag) + L)^T w = v``, ``L = left @ right`` strictly lower triangular
    (``left`` ``[d, k]``, ``right`` ``[k, d]``), by back substitution on the running sum
    ``R_j = sum_{i > j} left[i] w_i``: ``d`` steps of ``O(k)`` work, no ``d x d`` matrix."""

    def step(running, column):
        right_j, left_j, v_j, diag_j = column
        w_j = (v_j - right_j @ running) / diag_j
        return running + left_j * w_j, w_j

    init = jnp.zeros(left.shape[1], v.dtype)
    _, w = jax.lax.scan(step, init, (right.T, left, v, diag), reverse=True)
    return w
