"""Model-side declarations of the linear maps that consume Gaussian guide sites.

Each function computes an ordinary linear map of a latent site's value (``x @ w``, a convolution,
``v @ W``) and, when vigrad draws the particle and the guide's estimator for the site is
:class:`~vigrad.R2G2` (or :class:`~vigrad.LocalReparam`), gives it that estimator's gradient. Under
any other estimator, or outside vigrad (``numpyro.infer.Predictive``, NumPyro's own ELBOs), it is the
plain map.

The site must be consumed by exactly one declared map, and the value passed must be the site's value
itself (as returned by ``numpyro.sample``): R2-G2 conditions on the map's output, which is valid only
when the loss depends on the site's noise through that output alone (besides the site's own prior and
guide densities, which keep the plain pathwise gradient).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from vigrad.errors import EstimatorError
from vigrad.estimators.r2g2 import (
    MAP_USES,
    R2G2,
    GaussianNoise,
    LocalReparam,
    direct_projected_noise,
    r2g2_map,
)
from vigrad.objectives.particles import guide_site

stop = jax.lax.stop_gradient


def _declared(site_name: str, value: jax.Array, where: str) -> tuple[Any, GaussianNoise] | None:
    """The site's R2G2/LocalReparam estimator and recorded noise, or ``None`` for the plain map."""
    if not isinstance(site_name, str):
        raise TypeError(f"{where}: the site is named by a string, got {type(site_name).__name__}")
    site = guide_site(site_name)
    if site is None:
        return None
    infer = site.get("infer") or {}
    estimator = infer.get("vigrad_estimator")
    if not isinstance(estimator, R2G2 | LocalReparam):
        return None
    name = type(estimator).__name__
    if value is not site["value"]:
        raise EstimatorError(
            f"{name}() on site '{site_name}': {where} received an array that is not the site's "
            "value (the site is used outside the declared map, e.g. transposed, reshaped or "
            "combined with something first). Pass the value returned by numpyro.sample "
            f"('{site_name}', ...) unchanged, or use vigrad.Reparam() for this site."
        )
    # The count lives on this particle's guide trace; the estimator reads it when the model is done.
    infer[MAP_USES] = infer.get(MAP_USES, 0) + 1
    if infer[MAP_USES] > 1:
        raise EstimatorError(
            f"{name}() on site '{site_name}': the site is consumed by more than one declared "
            "map; R2-G2 conditions on one map's output. Apply the site once to all its inputs "
            f"(concatenate them along the batch axis), or use vigrad.Reparam() for '{site_name}'."
        )
    return estimator, infer["vigrad_extras"]


def _refuse_local(estimator: Any, site_name: str, where: str) -> None:
    if isinstance(estimator, LocalReparam):
        raise EstimatorError(
            f"LocalReparam() on site '{site_name}': the local reparameterisation trick applies to "
            f"dense layers (vigrad.nn.linear) only; in {where} the outputs share the site's noise "
            "and are not independent. Use vigrad.R2G2() for this site."
        )


def linear(site: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` for the Gaussian weight site ``site`` (value ``w``), declared linear in ``w``.

    Args:
        site: name of the latent site whose value is ``w``.
        x: ``[..., d_in]`` inputs when ``w`` is ``[d_in, d_out]`` (one weight draw for all rows of
            ``x``: one system per output unit, over all rows), or ``[*b, n, d_in]`` when ``w`` is
            ``[*b, d_in, d_out]`` (a weight draw per leading index, e.g. per example).
        w: the site's value.

    Returns:
        ``x @ w``; under :class:`~vigrad.R2G2` its gradient is R2-G2's, under
        :class:`~vigrad.LocalReparam` the pre-activations are resampled per row,
        ``x @ loc + sqrt(x^2 @ scale^2) * xi`` with ``xi`` seeded by the site's draw.
    """
    declared = _declared(site, w, "vigrad.nn.linear")
    if declared is None:
        return jnp.matmul(x, w)
    estimator, parts = declared
    if w.ndim < 2:
        raise EstimatorError(
            f"{type(estimator).__name__}() on site '{site}': vigrad.nn.linear needs a weight "
            f"matrix, got shape {w.shape}. Use vigrad.nn.latent_linear for a latent vector."
        )
    if isinstance(estimator, LocalReparam):
        return local_reparam_linear(x, parts.loc, parts.scale, parts.key)
    if estimator.per_example:
        if w.ndim != 2:
            raise EstimatorError(
                f"R2G2(per_example=True) on site '{site}': needs one weight matrix, got {w.shape}."
            )
        # Each example's system has rank one, where R2-G2 is the local reparameterisation trick
        # in closed form: no per-example weights, no solve.
        return local_reparam_linear(x, parts.loc, parts.scale, parts.key)
    if w.ndim == 2:
        axes = tuple(range(max(x.ndim, 1) - 1))
    else:
        if x.ndim != w.ndim:
            raise EstimatorError(
                f"R2G2() on site '{site}': a batched weight of shape {w.shape} needs inputs of "
                f"shape [*batch, n, d_in] with the same batch, got {x.shape}."
            )
        axes = (-2,)
    return r2g2_map(jnp.matmul, x, parts, axes, estimator.tol, estimator.maxiter)


def latent_linear(site: str, v: jax.Array, w: jax.Array) -> jax.Array:
    """``v @ w`` for the Gaussian latent site ``site`` (value ``v``) and a matrix ``w``.

    The map after a VAE's reparameterised latent: ``v`` is ``[..., d]`` (one system per leading
    index, e.g. per example) and ``w`` is ``[d, m]`` (parameters, keeping their gradient). R2-G2
    helps when ``m < d``, where the map loses directions of ``v``.
    """
    declared = _declared(site, v, "vigrad.nn.latent_linear")
    if declared is None:
        return jnp.matmul(v, w)
    estimator, parts = declared
    _refuse_local(estimator, site, "vigrad.nn.latent_linear")
    apply = lambda weights, u: jnp.matmul(u, weights)
    return r2g2_map(apply, w, parts, (-1,), estimator.tol, estimator.maxiter)


def conv2d(
    site: str,
    x: jax.Array,
    w: jax.Array,
    stride: int | Sequence[int] = 1,
    padding: str | Sequence[tuple[int, int]] = "SAME",
) -> jax.Array:
    """2-D convolution of ``x`` (NHWC) with the Gaussian kernel site ``site`` (value ``w``, HWIO).

    Under :class:`~vigrad.R2G2` each output channel is one system over all examples and positions.
    """
    declared = _declared(site, w, "vigrad.nn.conv2d")
    strides = (stride, stride) if isinstance(stride, int) else tuple(stride)
    apply = lambda inputs, kernel: jax.lax.conv_general_dilated(
        inputs, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    if declared is None:
        return apply(x, w)
    estimator, parts = declared
    _refuse_local(estimator, site, "vigrad.nn.conv2d")
    if estimator.per_example:
        return _per_example_conv2d(x, parts, strides, padding, estimator)
    return r2g2_map(apply, x, parts, (0, 1, 2), estimator.tol, estimator.maxiter)


def _per_example_conv2d(x, parts: GaussianNoise, strides, padding, estimator: R2G2) -> jax.Array:
    """R2-G2 with a kernel draw per example, written on the examples' patch matrices.

    With ``X_b`` the ``[positions, k*k*c_in]`` patch matrix of example ``b``, its outputs of channel
    ``o`` are ``X_b (loc_o + scale_o * eps_bo)``: a dense map per example and channel, whose
    projected noise is solved directly (:func:`~vigrad.estimators.r2g2.direct_projected_noise`).
    The mean ``conv(x, loc)`` stays one convolution; the noise ``X_b (scale * eps_b)`` is one batched
    product, its value that of the per-example draw and its gradient that of ``eps*``.
    """
    kh, kw, c_in, c_out = parts.loc.shape
    patches = _patches(x, (kh, kw), strides, padding)
    rows = patches.reshape(x.shape[0], -1, kh * kw * c_in)
    scale = parts.scale.reshape(kh * kw * c_in, c_out)
    noise = jax.random.normal(parts.key, (x.shape[0], *scale.shape), parts.noise.dtype)
    eps_star = direct_projected_noise(rows, scale, noise, estimator.tol, estimator.maxiter)
    value = jnp.einsum("bpk,bko->bpo", rows, scale * noise)
    star = jnp.einsum("bpk,bko->bpo", rows, scale * eps_star)
    mean = jax.lax.conv_general_dilated(
        x, parts.loc, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return mean + (stop(value - star) + star).reshape(mean.shape)


def _patches(x: jax.Array, window: tuple[int, int], strides, padding) -> jax.Array:
    """``[n, h_out, w_out, kh * kw * c]`` patches of NHWC ``x``, features ordered as a flattened
    HWIO kernel's inputs. Built from strided slices: a convolution with an identity kernel
    (``lax.conv_general_dilated_patches``) is several times slower on CPU, its gradient too."""
    kh, kw = window
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(x.shape[1:3], window, strides, padding)
    padded = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    h_out = (padded.shape[1] - kh) // strides[0] + 1
    w_out = (padded.shape[2] - kw) // strides[1] + 1
    shifted = [
        padded[
            :,
            i : i + strides[0] * (h_out - 1) + 1 : strides[0],
            j : j + strides[1] * (w_out - 1) + 1 : strides[1],
        ]
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.stack(shifted, axis=3).reshape(*shifted[0].shape[:3], kh * kw * x.shape[-1])


def local_reparam_linear(
    x: jax.Array, loc: jax.Array, scale: jax.Array, rng_key: jax.Array | None = None, noise=None
) -> jax.Array:
    """Pre-activations ``x @ W`` sampled directly, ``x @ loc + sqrt(x^2 @ scale^2) * xi``.

    ``xi`` is standard normal per output (``noise``, or drawn with ``rng_key``). This is also
    R2-G2 with a weight draw per example: example ``b``'s output ``j`` sees the weights' noise through
    the single row ``a = x_b * scale_j``, whose projection is ``eps* = a (a . eps) / |a|^2``, and
    ``a . eps / |a| = xi`` is standard normal, independently over examples and outputs. The value
    is ``x @ loc + sd * xi`` with ``sd^2 = x^2 @ scale^2``, and R2-G2's gradient, that of
    ``x @ (loc + scale * stop(eps*))``, is that of ``x @ loc + (sd^2 / 2) * stop(xi / sd)``: the
    local reparameterisation trick's, written without differentiating the square root, so an
    input row of zeros (``sd = 0``, where ``eps* = 0``) gets a zero gradient rather than NaN.
    """
    mean = jnp.matmul(x, loc)
    var = jnp.matmul(x**2, scale**2)
    if noise is None:
        noise = jax.random.normal(rng_key, mean.shape, mean.dtype)
    sd = jnp.sqrt(stop(var))
    positive = sd > 0
    unit = jnp.where(positive, noise / jnp.where(positive, sd, 1.0), 0.0)
    return mean + sd * noise + 0.5 * (var - stop(var)) * stop(unit)
