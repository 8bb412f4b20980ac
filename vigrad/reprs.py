"""Short reprs for vigrad's objects: the settings that differ from the defaults, and arrays as
their dtype and shape (``float32[4, 500]``) rather than their values.

A fit's or a sampler's result holds the data, the draws and the optimiser's state; printing them in
full buries the few facts a reader wants (how many steps, what was fitted, whether it converged).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

MAX_ITEMS = 8  # a mapping or sequence longer than this is shown by its length


def short(value: Any) -> str:
    """``value`` in a few characters: arrays by dtype and shape, functions by name."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{value.dtype}{list(value.shape)}"
    if isinstance(value, Mapping):
        if len(value) > MAX_ITEMS:
            return f"{{...{len(value)} items}}"
        return "{" + ", ".join(f"{k!r}: {short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple) and not hasattr(value, "_fields"):
        if len(value) > MAX_ITEMS:
            return f"[...{len(value)} items]"
        inner = ", ".join(short(v) for v in value)
        return (
            f"[{inner}]"
            if isinstance(value, list)
            else f"({inner}{',' if len(value) == 1 else ''})"
        )
    if inspect.isfunction(value) or inspect.ismethod(value) or inspect.isbuiltin(value):
        return value.__qualname__.rsplit("<locals>.", 1)[-1]
    return repr(value)


def fields_repr(obj: Any, fields: Mapping[str, Any]) -> str:
    """``Type(name=short(value), ...)`` over ``fields``."""
    return f"{type(obj).__name__}({', '.join(f'{k}={short(v)}' for k, v in fields.items())})"


def arguments_repr(obj: Any, overrides: Mapping[str, Any] | None = None) -> str:
    """``Type(arg=value, ...)``: the constructor's arguments that differ from their defaults.

    Each argument is read back from the attribute of the same name (``overrides`` supplies those
    stored under another name); arguments without a default are always shown.
    """
    overrides = dict(overrides or {})
    shown = {}
    for name, param in inspect.signature(type(obj).__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name not in overrides and not hasattr(obj, name):
            continue
        value = overrides[name] if name in overrides else getattr(obj, name)
        default = param.default
        if default is not param.empty and (value is default or _equal(value, default)):
            continue
        shown[name] = value
    return fields_repr(obj, shown)


def _equal(a: Any, b: Any) -> bool:
    # Only plain values compare here: arrays or modules never equal a default by value.
    plain = (bool, int, float, str, type(None))
    return isinstance(a, plain) and isinstance(b, plain) and a == b
