"""Pointwise log-likelihood of posterior draws, for ArviZ's ``log_likelihood`` group.

``log p(y_i | θ_s)`` for every observed site, every observation i and every draw s, unscaled (a
subsampling plate's N/n scale is not applied): what ``az.loo``, ``az.waic`` and ``az.compare``
need (Vehtari, Gelman & Gabry 2017, "Practical Bayesian model evaluation using leave-one-out
cross-validation and WAIC").
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import jax
import numpy as np

from vigrad.traces import trace_program

CHUNK = 256
"""Draws evaluated together under ``vmap`` (bounds memory to ``CHUNK`` x data size per site)."""


def pointwise_log_likelihood(
    model: Callable,
    samples: dict[str, np.ndarray],
    args: tuple = (),
    kwargs: dict | None = None,
    batch_ndims: int = 2,
) -> dict[str, np.ndarray]:
    """Observed site name -> ``log p(y | θ)`` per draw, shape ``batch + site shape``.

    Args:
        model: the NumPyro model (with any data plate run on all its data).
        samples: latent (and deterministic) site values with ``batch_ndims`` leading axes.
        args, kwargs: the model's arguments.
        batch_ndims: leading axes of ``samples`` (2: chain and draw).
    """
    kwargs = dict(kwargs or {})
    samples = {k: np.asarray(v) for k, v in samples.items()}
    batch = next(iter(samples.values())).shape[:batch_ndims]
    flat = {k: v.reshape(-1, *v.shape[batch_ndims:]) for k, v in samples.items()}

    def one(values):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            observed = trace_program(model, args, kwargs, params=values).observed
        return {
            n: s["fn"].log_prob(s["value"]) for n, s in observed.items() if not n.startswith("_")
        }

    out = jax.jit(lambda v: jax.lax.map(one, v, batch_size=CHUNK))(flat)
    return {k: np.asarray(v).reshape(*batch, *np.shape(v)[1:]) for k, v in out.items()}
