"""ArviZ dims and coords named after the model's plates, as ``arviz.from_numpyro`` names them.

A site's value has the shape ``batch_shape + event_shape``; a plate with ``dim = -k`` indexes the
k-th batch axis from the right, so that axis takes the plate's name and ``range(size)`` as its
coordinates. Axes no plate indexes keep ArviZ's default name ``<site>_dim_<i>``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import jax
import numpy as np

from vigrad.traces import trace_program


def plate_dims(
    model: Callable,
    args: tuple = (),
    kwargs: dict | None = None,
    *,
    dims: dict[str, list[str]] | None = None,
    coords: dict[str, object] | None = None,
) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """``(dims, coords)`` of every sample and deterministic site of ``model`` (one trace).

    Args:
        model, args, kwargs: the NumPyro model and its arguments (run the data plate on all its
            data, or its size is the subsample's).
        dims, coords: given by the user; they override what the plates give.

    Returns:
        ``dims``: site name -> a name per axis of the site's value (without chain and draw axes);
        ``coords``: plate name -> ``np.arange(size)``, updated with ``coords``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sites = trace_program(model, args, kwargs, rng_key=jax.random.key(0))
    out_dims: dict[str, list[str]] = {}
    out_coords: dict[str, np.ndarray] = {}
    for name, site in {**sites.samples, **sites.deterministic}.items():
        shape = np.shape(site["value"])
        event = len(site["fn"].event_shape) if site["type"] == "sample" else 0
        names = [f"{name}_dim_{i}" for i in range(len(shape))]
        for frame in site.get("cond_indep_stack", []):
            axis = len(shape) - event + frame.dim
            if 0 <= axis < len(shape) and shape[axis] == frame.size:
                names[axis] = frame.name
                out_coords[frame.name] = np.arange(frame.size)
        if any(not n.startswith(f"{name}_dim_") for n in names):
            out_dims[name] = names
    out_dims.update(dims or {})
    out_coords.update({k: np.asarray(v) for k, v in (coords or {}).items()})
    return out_dims, out_coords
