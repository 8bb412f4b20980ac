"""A stable, JSON-able description of a Python value: what a checkpoint records about its run.

Two objects built the same way in two processes get the same description; objects that differ in
a type, a field, a hyperparameter held in a closure (optax keeps the learning rate there) or an
array's contents get different ones. Memory addresses never enter it, so it survives a restart.

Objects are described by their type and attributes, functions by their qualified name, default
arguments and closure, arrays by dtype, shape and their values (a SHA-256 digest of their bytes
when they are large). Beyond :data:`MAX_DEPTH` nested levels, or on a cycle, only the type's name
is kept.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import types
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

MAX_DEPTH = 10
"""Nesting levels described in full; deeper values are named by type only."""

SHOWN_SIZE = 8
"""Arrays up to this many elements are described by their values, larger ones by a digest."""


def _name(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or ""
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if qualname is None:
        return _name(type(obj))
    return f"{module}.{qualname}" if module else qualname


def array_summary(x: Any) -> str:
    """``dtype[shape]``, e.g. ``float64[3, 2]``; typed PRNG keys as ``key<impl>[shape]``."""
    shape = ", ".join(str(d) for d in np.shape(x))
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return f"key<{jax.random.key_impl(x)}>[{shape}]"
    return f"{np.dtype(x.dtype).name}[{shape}]"


def _array(x: Any) -> str:
    """Summary plus the values of a small array (a PRNG key's data), else a digest of them."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = np.asarray(jax.random.key_data(x))
    else:
        data = np.asarray(x)
    if data.size <= SHOWN_SIZE:
        return f"{array_summary(x)} {data.tolist()!r}"
    return f"{array_summary(x)} sha256:{hashlib.sha256(data.tobytes()).hexdigest()[:16]}"


def describe(obj: Any) -> Any:
    """The description of ``obj``: nested dicts, lists and strings (JSON-able)."""
    return _describe(obj, 0, frozenset())


def _describe(obj: Any, depth: int, seen: frozenset) -> Any:
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, (float, complex)):
        # repr round-trips exactly and, unlike a JSON number, keeps nan equal to itself.
        return repr(obj)
    if isinstance(obj, np.generic):
        return f"{obj.dtype.name}({obj.item()!r})"
    if isinstance(obj, (np.ndarray, jax.Array)):
        return _array(obj)
    if isinstance(obj, (type, types.ModuleType)):
        return _name(obj)
    if depth >= MAX_DEPTH or id(obj) in seen:
        return _name(type(obj))
    seen = seen | {id(obj)}
    inner = functools.partial(_describe, depth=depth + 1, seen=seen)

    if isinstance(obj, Mapping):
        items = {str(inner(k)): inner(v) for k, v in obj.items()}
        return {k: items[k] for k in sorted(items)}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return {"__type__": _name(type(obj)), **{f: inner(getattr(obj, f)) for f in obj._fields}}
    if isinstance(obj, (list, tuple)):
        return [inner(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((inner(v) for v in obj), key=repr)
    if isinstance(obj, functools.partial):
        return {
            "partial": inner(obj.func),
            "args": inner(obj.args),
            "keywords": inner(obj.keywords),
        }
    if isinstance(obj, types.MethodType):
        return {"method": _name(obj.__func__), "of": inner(obj.__self__)}
    if isinstance(obj, types.FunctionType):
        return {
            "function": _name(obj),
            "defaults": inner(obj.__defaults__),
            "kwdefaults": inner(obj.__kwdefaults__),
            "closure": [inner(_cell(c)) for c in obj.__closure__ or ()],
        }
    wrapped = getattr(obj, "__wrapped__", None)
    if callable(obj) and wrapped is not None:
        # jax.jit and functools.wraps wrappers: the wrapped function is what differs.
        return {"wraps": inner(wrapped)}
    if dataclasses.is_dataclass(obj):
        fields = {f.name: inner(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {"__type__": _name(type(obj)), **fields}
    attrs = getattr(obj, "__dict__", None)
    if isinstance(attrs, dict):
        return {"__type__": _name(type(obj)), **{k: inner(attrs[k]) for k in sorted(attrs)}}
    return _name(type(obj)) if not callable(obj) else _name(obj)


def _cell(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # a closure variable not yet assigned
        return None
