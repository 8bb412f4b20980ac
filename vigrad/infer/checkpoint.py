"""Checkpoints: a run's state as plain arrays, read back only into the run it belongs to.

A checkpoint is a NumPy ``.npz`` archive (an uncompressed zip of ``.npy`` members) and is read with
``np.load(..., allow_pickle=False)``: loading one never runs code, which unpickling a file can.
Its members:

- ``meta``: UTF-8 JSON stored as a ``uint8`` array. It holds the format's name and version; the
  description of the run the checkpoint belongs to (parameters, objective, optimiser, kernel, key,
  step count; built by the caller, compared by :func:`load_checkpoint`); one entry per array (its
  key path in the state or its name in the history, kind, dtype, shape, PRNG implementation); and
  the SHA-256 digest of the array payload.
- ``s0, s1, ...``: the state's leaves in ``jax.tree_util`` order; ``h0, h1, ...``: the history.

The state has a fixed structure (parameters, optimiser state, keys, step counter), so it is rebuilt
from a template, the caller's fresh initial state, after checking that every key path, dtype and
shape agrees. The history (losses, draws) grows with the run: a flat mapping of named arrays.
Typed PRNG keys are stored as key data plus the implementation's name, Python numbers as 0-d
arrays, and dtypes that ``.npy`` cannot name (bfloat16) as raw bytes.

Writes are atomic and durable: the archive goes to a temporary file in the same directory, is
flushed and ``fsync``-ed, replaces the checkpoint with ``os.replace`` and the directory is
``fsync``-ed. A process killed at any moment leaves the previous checkpoint (or none) readable, and
at worst a stray ``.<name>.*.tmp`` file beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
import tempfile
import zipfile
from collections.abc import Collection
from typing import Any

import jax
import numpy as np

from vigrad.errors import CheckpointError
from vigrad.infer.describe import array_summary

FORMAT = "vigrad-checkpoint"
VERSION = 2
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL = b"\x80"
_SHOWN_DIFFERENCES = 8


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """What :func:`load_checkpoint` returns.

    Attributes:
        state: the saved state, with the template's structure, array types and shardings.
        history: the saved history arrays by name.
        run: the run description recorded when the checkpoint was written.
    """

    state: Any
    history: dict[str, np.ndarray]
    run: dict


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _summary(x: Any) -> str:
    """What a leaf must agree on between checkpoint and template: kind, dtype, shape."""
    for kind in (bool, int, float):
        if isinstance(x, kind):
            return kind.__name__
    if isinstance(x, (np.ndarray, np.generic, jax.Array)):
        return array_summary(x)
    raise TypeError(
        f"a checkpoint holds arrays, PRNG keys and Python numbers, not {type(x).__name__}"
    )


def _encode(x: Any, where: str) -> tuple[dict, np.ndarray]:
    """A leaf as its metadata entry and the array written for it."""
    try:
        entry = {"where": where, "summary": _summary(x)}
    except TypeError as err:
        raise TypeError(f"checkpoint leaf {where}: {err}") from None
    if _is_key(x):
        entry["impl"] = str(jax.random.key_impl(x))
        array = np.asarray(jax.random.key_data(x))
    else:
        array = np.asarray(x)
    entry["dtype"], entry["shape"] = array.dtype.name, list(array.shape)
    if array.dtype.isbuiltin == 1 and array.dtype.kind in "biufc":
        entry["raw"] = False
    elif array.dtype.kind == "V" and array.dtype.isbuiltin == 2:
        # An extension dtype (ml_dtypes' bfloat16, float8): .npy would store it as opaque void.
        entry["raw"] = True
        array = np.frombuffer(array.tobytes(), np.uint8)
    else:
        raise TypeError(f"checkpoint leaf {where}: cannot store an array of dtype {array.dtype}")
    return entry, np.asarray(array, order="C")


def _digest(arrays: list[np.ndarray]) -> str:
    sha = hashlib.sha256()
    for array in arrays:
        sha.update(array.tobytes())
    return sha.hexdigest()


def save_checkpoint(
    path: str | os.PathLike, state: Any, run: dict, history: dict[str, Any] | None = None
) -> None:
    """Write ``state`` (a pytree), ``history`` and the ``run`` description to ``path`` atomically.

    Args:
        path: the checkpoint file (conventionally ``*.npz``); its directory is created if needed.
        state: a pytree of arrays, typed PRNG keys and Python numbers with a fixed structure.
        run: a JSON-able description of what the checkpoint belongs to.
        history: arrays whose shapes grow with the run, by name.
    """
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    encoded = [_encode(x, jax.tree_util.keystr(p)) for p, x in leaves]
    named = sorted((history or {}).items())
    encoded_history = [_encode(x, name) for name, x in named]
    for prefix, group in (("s", encoded), ("h", encoded_history)):
        for i, (entry, _) in enumerate(group):
            entry["member"] = f"{prefix}{i}"
    arrays = [a for _, a in encoded + encoded_history]
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "run": run,
        "state": [e for e, _ in encoded],
        "history": [e for e, _ in encoded_history],
        "sha256": _digest(arrays),
    }
    payload = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)

    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
                _write_member(archive, "meta", payload)
                for entry, array in encoded + encoded_history:
                    _write_member(archive, entry["member"], array)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _write_member(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, array, allow_pickle=False)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable: it lives in the directory's entry, not in the file."""
    if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open a directory; NTFS journals renames.
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _start_afresh(path: str | os.PathLike) -> str:
    return f"To start afresh, delete {os.fspath(path)} or pass resume=False."


def _read(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """The metadata and arrays of a checkpoint, after checking the format and the digest."""
    with open(path, "rb") as handle:
        head = handle.read(len(_ZIP_MAGIC))
    if head != _ZIP_MAGIC:
        if _ZIP_MAGIC.startswith(head):
            raise CheckpointError(
                f"checkpoint {os.fspath(path)} is truncated or corrupt ({len(head)} bytes long). "
                + _start_afresh(path)
            )
        if head.startswith(_PICKLE_PROTOCOL):
            raise CheckpointError(
                f"{os.fspath(path)} is a pickled checkpoint from an older vigrad. It is not loaded: "
                f"unpickling a file can run arbitrary code. {_start_afresh(path)}"
            )
        raise CheckpointError(
            f"{os.fspath(path)} is not a vigrad checkpoint (expected a .npz archive). "
            + _start_afresh(path)
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = None
            if "meta" in archive.files:
                meta = json.loads(bytes(archive["meta"]).decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise CheckpointError(
                    f"{os.fspath(path)} is not a vigrad checkpoint. " + _start_afresh(path)
                )
            if meta.get("version") != VERSION:
                raise CheckpointError(
                    f"{os.fspath(path)} has checkpoint format version {meta.get('version')}; "
                    f"this vigrad reads version {VERSION}. {_start_afresh(path)}"
                )
            entries = meta["state"] + meta["history"]
            arrays = {e["member"]: archive[e["member"]] for e in entries}
            for e in entries:
                _check_entry(e, arrays[e["member"]])
            intact = _digest([arrays[e["member"]] for e in entries]) == meta["sha256"]
    except CheckpointError:
        raise
    except (
        zipfile.BadZipFile,
        OSError,
        EOFError,
        KeyError,
        TypeError,
        ValueError,
        struct.error,
    ) as err:
        raise CheckpointError(
            f"checkpoint {os.fspath(path)} is truncated or corrupt ({type(err).__name__}: {err}). "
            + _start_afresh(path)
        ) from None
    if not intact:
        raise CheckpointError(
            f"checkpoint {os.fspath(path)} is corrupt: its arrays do not match their SHA-256 "
            f"checksum. {_start_afresh(path)}"
        )
    return meta, arrays


def _check_entry(entry: dict, array: np.ndarray) -> None:
    """The array read for an entry is the one its metadata describes."""
    shape, dtype = entry["shape"], entry["dtype"]
    if entry["raw"]:
        shape, dtype = [math.prod(shape) * jax.numpy.dtype(dtype).itemsize], "uint8"
    if not isinstance(entry["where"], str) or list(array.shape) != shape or array.dtype != dtype:
        raise ValueError(f"member {entry['member']} does not match its metadata")


def _decode(entry: dict, array: np.ndarray, like: Any = None) -> Any:
    """The saved leaf as the template leaf's type (Python number, NumPy or JAX array, key)."""
    if entry["raw"]:
        array = np.frombuffer(array.tobytes(), jax.numpy.dtype(entry["dtype"]))
        array = array.reshape(entry["shape"])
    if isinstance(like, (bool, int, float)):
        return type(like)(array.item())
    if isinstance(like, jax.Array):
        value = array
        if _is_key(like):
            value = jax.random.wrap_key_data(array, impl=entry["impl"])
        return jax.device_put(value, like.sharding)
    return array


def _differences(saved: Any, current: Any, where: str) -> list[str]:
    """Paths (``objective.num_particles``) at which two run descriptions differ, with values."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for name in ("__type__", "function"):
            # Objects of different types: their fields need not be listed.
            if saved.get(name) != current.get(name):
                inner = f"{where}.{name}" if where else name
                return [
                    f"{inner}: checkpoint has {_short(saved.get(name))}, this call has "
                    f"{_short(current.get(name))}"
                ]
        out = []
        for key in sorted(set(saved) | set(current)):
            inner = f"{where}.{key}" if where else key
            if key not in saved or key not in current:
                side = "this call" if key in current else "the checkpoint"
                out.append(f"{inner}: only {side} has it")
            else:
                out.extend(_differences(saved[key], current[key], inner))
        return out
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        out = []
        for i, (a, b) in enumerate(zip(saved, current, strict=True)):
            out.extend(_differences(a, b, f"{where}[{i}]"))
        return out
    if saved == current:
        return []
    return [f"{where}: checkpoint has {_short(saved)}, this call has {_short(current)}"]


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 160 else text[:157] + "..."


def load_checkpoint(
    path: str | os.PathLike,
    template: Any,
    run: dict,
    extendable: Collection[str] = (),
    extend: bool = False,
) -> Checkpoint:
    """Read the checkpoint at ``path`` written for the run described by ``run``.

    Args:
        path: a file written by :func:`save_checkpoint`.
        template: a state with the structure, dtypes and shapes of the saved one (the run's fresh
            initial state); the loaded state takes its pytree structure, leaf types and shardings.
        run: this run's description; every entry must equal the saved one.
        extendable: top-level entries of ``run`` that set the run's length (``num_steps``).
        extend: let the ``extendable`` entries differ, to continue a run to a new length.

    Raises:
        CheckpointError: the file is a pickle, not a checkpoint, truncated or corrupt, or belongs to
            a different run; the message names the file, what differs, and how to start afresh.
    """
    meta, arrays = _read(path)
    current = json.loads(json.dumps(run))
    saved_run = meta["run"]
    ignored = set(extendable) if extend else set()
    differences = _differences(
        {k: v for k, v in saved_run.items() if k not in ignored},
        {k: v for k, v in current.items() if k not in ignored},
        "",
    )
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    expected = [(jax.tree_util.keystr(p), _summary(x)) for p, x in leaves]
    found = [(e["where"], e["summary"]) for e in meta["state"]]
    if not differences and expected != found:
        differences = _state_differences(found, expected)
    if differences:
        shown = differences[:_SHOWN_DIFFERENCES]
        if len(differences) > len(shown):
            shown.append(f"... and {len(differences) - len(shown)} more")
        fix = _start_afresh(path)
        if all(d.split(":")[0] in extendable for d in differences):
            fix += " To continue the saved run to this call's length, pass resume='extend'."
        parts = sorted({d.split(".")[0].split("[")[0].split(":")[0] for d in differences})
        raise CheckpointError(
            f"checkpoint {os.fspath(path)} belongs to a different run; these differ: "
            f"{', '.join(parts)}.\n  " + "\n  ".join(shown) + f"\n{fix}"
        )
    values = [
        _decode(e, arrays[e["member"]], x) for e, (_, x) in zip(meta["state"], leaves, strict=True)
    ]
    history = {e["where"]: _decode(e, arrays[e["member"]]) for e in meta["history"]}
    return Checkpoint(jax.tree_util.tree_unflatten(treedef, values), history, saved_run)


def _state_differences(found: list, expected: list) -> list[str]:
    found_map, expected_map = dict(found), dict(expected)
    out = []
    for where in sorted(set(found_map) | set(expected_map)):
        saved, current = found_map.get(where), expected_map.get(where)
        if saved is None:
            out.append(f"state{where}: only this call has it ({current})")
        elif current is None:
            out.append(f"state{where}: only the checkpoint has it ({saved})")
        elif saved != current:
            out.append(f"state{where}: checkpoint has {saved}, this call has {current}")
    return out or ["the state's leaves are in a different order"]


def resume_checkpoint(
    path: str | os.PathLike | None,
    resume: bool | str,
    template: Any,
    run: dict,
    extendable: Collection[str] = ("num_steps",),
) -> Checkpoint | None:
    """The checkpoint to continue from, or ``None`` to start afresh.

    ``resume=False`` (or no ``path``, or no file there yet) starts afresh. ``resume=True`` continues
    from the checkpoint if it belongs to exactly this run. ``resume="extend"`` also lets the
    ``extendable`` entries of ``run`` differ, so a finished or interrupted run continues to a new
    total ``run["num_steps"]``, at least the ``state["step"]`` steps already done.
    """
    if resume not in (False, True, "extend"):
        raise ValueError(f"resume must be True, False or 'extend', got {resume!r}")
    if not resume or path is None or not os.path.exists(path):
        return None
    checkpoint = load_checkpoint(path, template, run, extendable, extend=resume == "extend")
    done, total = checkpoint.state["step"], run["num_steps"]
    if done > total:
        raise CheckpointError(
            f"checkpoint {os.fspath(path)} has done {done} steps, more than the {total} steps "
            f"this call runs in all, so it cannot continue to this call's length. "
            + _start_afresh(path)
        )
    return checkpoint
