"""Load models by name from the model zoo (plain Python files installed with vigrad) or from a file.

A zoo file is an ordinary Python module exposing:

* ``model``: a NumPyro model; its data are keyword arguments;
* ``guide``: the recommended guide (a hand-written NumPyro program or an autoguide);
* ``load_data()``: returns the model's keyword arguments (small bundled or generated data);
* optionally ``ESTIMATORS`` (a mapping from guide site to estimator), ``NUM_PARTICLES``, ``STEPS``,
  ``LEARNING_RATE``, ``DATA_PLATE`` (the name of the plate over observations, for SG-MCMC
  minibatching) and ``REFERENCE`` (a JSON file beside it with the reference posterior: per site
  ``{"mean": [...], "sd": [...]}`` from a long NUTS run, written by ``scripts/make_references.py``,
  with thinned NUTS draws per site in ``<name>.draws.npz`` beside it, which plots draw as the
  reference histogram).

The zoo's files live in ``vigrad/zoo/models/`` (``models_dir()``; ``$VIGRAD_MODELS`` points the
zoo at another folder) with their data in ``data/`` and reference posteriors in ``reference/``.
They are loaded by path, not imported as vigrad modules, so a user's own file works the same.
``vigrad sample`` chooses its step size with a pilot run per kernel, so a file declares none.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vigrad.errors import VigradError

__all__ = ["ZooModel", "describe_model", "list_models", "load_model", "models_dir"]


def models_dir() -> Path:
    """The zoo folder: ``$VIGRAD_MODELS``, else the ``models/`` folder installed with vigrad."""
    env = os.environ.get("VIGRAD_MODELS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent / "models"


@dataclasses.dataclass(frozen=True)
class ZooModel:
    """A model, its recommended guide and settings, loaded from one Python file."""

    name: str
    path: Path
    model: Callable
    guide: Callable
    load_data: Callable[[], Mapping[str, Any]]
    description: str
    estimators: Mapping[str, Any]
    num_particles: int
    steps: int
    learning_rate: float
    data_plate: str | None
    reference_path: Path | None
    reference: dict[str, Any] | None


def list_models() -> list[str]:
    """Names of the models in the zoo."""
    return sorted(p.stem for p in models_dir().glob("*.py") if not p.stem.startswith("_"))


def _import_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(f"vigrad_zoo_{name}", path)
    module = importlib.util.module_from_spec(spec)
    # Zoo files may share helpers in sibling files (e.g. ``_digits.py``).
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def _model_path(name_or_path: str | os.PathLike) -> Path:
    """The file of a zoo model name or a path, with the nearest zoo names when a name is unknown."""
    text = str(name_or_path)
    if text.endswith(".py") or os.sep in text:
        path = Path(text)
        if not path.is_file():
            raise VigradError(f"No model file at '{path}'.")
        return path
    path = models_dir() / f"{text}.py"
    if not path.is_file():
        names = list_models()
        close = difflib.get_close_matches(text, names, n=3)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise VigradError(
            f"Unknown model '{text}'.{hint} Zoo models: {', '.join(names) or '(none found)'}; "
            "or pass the path of a Python file that defines model, guide and load_data()."
        )
    return path


def describe_model(name_or_path: str | os.PathLike) -> str:
    """The first line of a model file's docstring, read without running the file.

    Listing the zoo this way (``vigrad models``) imports neither JAX nor NumPyro.

    Raises:
        VigradError: as :func:`load_model`, for an unknown name or a missing file.
    """
    path = _model_path(name_or_path)
    doc = ast.get_docstring(ast.parse(path.read_text(), str(path)))
    return (doc or path.stem).strip().splitlines()[0]


def load_model(name_or_path: str | os.PathLike) -> ZooModel:
    """Load a zoo model by name (``"eight_schools"``) or a user's file by path (``"my_model.py"``).

    Raises:
        VigradError: the name is not in the zoo, the file does not exist, or it lacks ``model``,
            ``guide`` or ``load_data``.
    """
    path = _model_path(name_or_path)
    module = _import_file(path.stem, path)
    missing = [a for a in ("model", "guide", "load_data") if not hasattr(module, a)]
    if missing:
        raise VigradError(
            f"{path} must define model, guide and load_data(); it lacks {', '.join(missing)}."
        )
    ref_name = getattr(module, "REFERENCE", None)
    ref_path = None if ref_name is None else path.parent / ref_name
    reference = _read_reference(ref_path) if ref_path and ref_path.is_file() else None
    doc = (module.__doc__ or path.stem).strip().splitlines()[0]
    return ZooModel(
        name=path.stem,
        path=path,
        model=module.model,
        guide=module.guide,
        load_data=module.load_data,
        description=doc,
        estimators=dict(getattr(module, "ESTIMATORS", {})),
        num_particles=int(getattr(module, "NUM_PARTICLES", 1)),
        steps=int(getattr(module, "STEPS", 2000)),
        learning_rate=float(getattr(module, "LEARNING_RATE", 1e-2)),
        data_plate=getattr(module, "DATA_PLATE", None),
        reference_path=ref_path,
        reference=reference,
    )


def _read_reference(path: Path) -> dict[str, Any]:
    """The reference summary, with each site's thinned NUTS draws ``[S_ref, n_elements]`` under
    ``sites[name]["draws"]`` when the draws file exists."""
    reference = json.loads(path.read_text())
    draws_path = path.with_suffix(".draws.npz")
    if draws_path.is_file():
        import numpy as np

        with np.load(draws_path) as draws:
            for name, site in reference["sites"].items():
                if name in draws.files:
                    site["draws"] = draws[name]
    return reference
