"""Monte Carlo check that a gradient estimator's mean is the exact gradient (see docs/contributing.md,
"How vigrad proves its estimators right").

For each coordinate, z = (mean - exact) / (sd / sqrt(M)) over M independent estimates; an unbiased
estimator keeps max |z| below a Bonferroni threshold (4.5 for a few dozen coordinates at a 1e-4
family-wise false-alarm rate), a biased one exceeds it once M is large enough.
"""

import jax
import jax.numpy as jnp
import numpy as np

THRESHOLD = 4.5


def max_abs_z(estimates, exact) -> float:
    """Largest |z| over all coordinates of a pytree of [M, ...] estimates against exact values."""
    zs = []
    for est, ex in zip(jax.tree.leaves(estimates), jax.tree.leaves(exact), strict=True):
        est = np.asarray(est, dtype=np.float64)
        m = est.shape[0]
        mean = est.mean(axis=0)
        se = est.std(axis=0, ddof=1) / np.sqrt(m)
        diff = mean - np.asarray(ex, dtype=np.float64)
        # A coordinate with zero variance must match exactly (up to rounding).
        z = np.where(se > 0, np.abs(diff) / np.where(se > 0, se, 1.0), np.abs(diff) * 1e12)
        zs.append(np.max(z))
    return float(max(zs))


def max_two_sample_z(a, b) -> float:
    """Largest |z| of the difference of two pytrees of [M, ...] estimates' means."""
    zs = []
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        se = np.sqrt(x.var(axis=0, ddof=1) / x.shape[0] + y.var(axis=0, ddof=1) / y.shape[0])
        diff = np.abs(x.mean(axis=0) - y.mean(axis=0))
        zs.append(np.max(np.where(se > 0, diff / np.where(se > 0, se, 1.0), diff * 1e12)))
    return float(max(zs))


def gradient_samples(loss_fn, params, key, num_samples):
    """[M, ...] gradients of ``loss_fn(key, params)`` over independent keys, vectorised."""
    keys = jax.random.split(key, num_samples)
    return jax.jit(jax.vmap(lambda k: jax.grad(lambda p: loss_fn(k, p))(params)))(keys)


def exact_gradient(fn, params):
    return jax.grad(fn)(params)


def tree_allclose(a, b, **kw) -> bool:
    return all(
        bool(jnp.allclose(x, y, **kw))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
