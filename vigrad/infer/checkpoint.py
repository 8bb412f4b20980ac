"""Checkpoints: a pytree of arrays written to disk and read back unchanged.

Arrays are moved to host memory as NumPy arrays and the whole tree is pickled together with its
structure, so a run resumed from a checkpoint continues bit for bit (typed PRNG keys are stored as
their key data and rewrapped on load).
"""

from __future__ import annotations

import os
import pickle
import tempfile
from typing import Any

import jax
import numpy as np

_FORMAT = "vigrad-checkpoint-1"


class _KeyData:
    """A typed PRNG key stored as raw key data plus its implementation name."""

    def __init__(self, key: jax.Array):
        self.data = np.asarray(jax.random.key_data(key))
        self.impl = str(jax.random.key_impl(key))

    def restore(self) -> jax.Array:
        return jax.random.wrap_key_data(self.data, impl=self.impl)


def _to_host(x: Any) -> Any:
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return _KeyData(x)
    if isinstance(x, (jax.Array, np.ndarray)):
        return np.asarray(x)
    return x


def _from_host(x: Any) -> Any:
    if isinstance(x, _KeyData):
        return x.restore()
    if isinstance(x, np.ndarray):
        return jax.numpy.asarray(x)
    return x


def save_checkpoint(path: str | os.PathLike, tree: Any) -> None:
    """Write ``tree`` (any pytree of arrays, keys and Python scalars) to ``path`` atomically."""
    host = jax.tree.map(_to_host, tree)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, delete=False) as handle:
        pickle.dump({"format": _FORMAT, "tree": host}, handle)
        tmp = handle.name
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Read a pytree written by :func:`save_checkpoint`."""
    with open(path, "rb") as handle:
        payload = pickle.load(handle)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a vigrad checkpoint")
    return jax.tree.map(_from_host, payload["tree"], is_leaf=lambda x: isinstance(x, _KeyData))
