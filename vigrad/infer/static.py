"""Model arguments split into traced arrays and hashable static values.

``jit`` traces array arguments and must treat everything else (Python numbers, strings, ``None``,
callables) as part of the compiled function's identity. ``split_static`` separates the two so that
compiled functions can be cached on the static part; ``join_static`` rebuilds the arguments.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def split_static(args: tuple, kwargs: dict) -> tuple[list, tuple]:
    leaves, treedef = jax.tree.flatten((args, kwargs))
    is_array = tuple(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves)
    dynamic = [jnp.asarray(leaf) for leaf, a in zip(leaves, is_array, strict=True) if a]
    static = tuple(None if a else leaf for leaf, a in zip(leaves, is_array, strict=True))
    key = (treedef, is_array, static)
    try:
        hash(key)
    except TypeError as err:
        raise TypeError(
            "fit(): model arguments that are not arrays are treated as static and must be "
            f"hashable; convert them to arrays or hashable values ({err})"
        ) from None
    return dynamic, key


def join_static(dynamic: list, key: tuple) -> tuple[tuple, dict]:
    treedef, is_array, static = key
    it = iter(dynamic)
    leaves = [next(it) if a else s for a, s in zip(is_array, static, strict=True)]
    return jax.tree.unflatten(treedef, leaves)
