"""Accuracy of the per-example convolution projection in float32, against the pseudo-inverse.

For each example b and output channel o of a convolution, R2-G2 with per-example kernel noise needs
``eps* = A^+ A eps`` with ``A = X_b diag(scale_o)`` (``X_b`` the example's patch matrix). This script
compares, on digit patches (32 images; the second convolution sees a ReLU of a random first
convolution, whose patch matrices are rank deficient), the direct solve that ``vigrad.nn.conv2d``
uses (``direct_projected_noise``) and per-example conjugate gradients as the previous
implementation ran them (``projected_noise``, capped at the rank bound, relative residual 1e-6), with
NumPy's float64 pseudo-inverse. Reported per method: the relative residual of the pre-activations,
``|A (eps - eps*)| / |A eps|`` (zero for the exact projection: ``eps*`` must reproduce the outputs),
median and maximum over all (example, channel) systems.

Usage: python benchmarks/r2g2/projection_accuracy.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from common import digits

from vigrad.estimators.r2g2 import direct_projected_noise, projected_noise
from vigrad.nn.functional import _patches


def residuals(rows: np.ndarray, scale: np.ndarray, noise: np.ndarray, eps_star: np.ndarray):
    out = []
    for b in range(rows.shape[0]):
        for o in range(scale.shape[1]):
            a = rows[b] * scale[:, o]
            z = a @ noise[b, :, o]
            out.append(np.linalg.norm(a @ (noise[b, :, o] - eps_star[b, :, o])) / np.linalg.norm(z))
    return np.asarray(out)


def main():
    key = jax.random.PRNGKey(0)
    k1, k2, k3 = jax.random.split(key, 3)
    images = jnp.asarray(digits()[0][:32]).reshape(-1, 8, 8, 1)
    first = 0.5 * jax.random.normal(k1, (3, 3, 1, 4))
    hidden = jax.nn.relu(
        jax.lax.conv_general_dilated(
            images, first, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        - 0.2
    )
    layers = {
        "conv 1 (3x3, 1 -> 4)": (images, (3, 3, 1, 4), (1, 1)),
        "conv 2 (3x3 stride 2, 4 -> 8)": (hidden, (3, 3, 4, 8), (2, 2)),
    }
    for name, (x, shape, strides) in layers.items():
        size = shape[0] * shape[1] * shape[2]
        rows = _patches(x, shape[:2], strides, "SAME").reshape(x.shape[0], -1, size)
        scale = 0.05 * jnp.exp(0.5 * jax.random.normal(k2, (size, shape[3])))
        noise = jax.random.normal(k3, (x.shape[0], size, shape[3]))
        cg, _ = projected_noise(
            lambda u, rows=rows: jnp.einsum("bpk,bko->bpo", rows, u), scale, noise, (1,)
        )
        direct = direct_projected_noise(rows, scale, noise)
        arrays = [np.asarray(a, np.float64) for a in (rows, scale, noise)]
        ranks = sorted({int(np.linalg.matrix_rank(r)) for r in arrays[0]})
        print(f"{name}: patch matrices {rows.shape[1]} x {size}, ranks {ranks}")
        for method, eps_star in (("per-example CG", cg), ("direct solve", direct)):
            res = residuals(*arrays, np.asarray(eps_star, np.float64))
            print(f"  {method:15s} residual median {np.median(res):.1e}  max {res.max():.1e}")


if __name__ == "__main__":
    main()
