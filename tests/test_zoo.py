"""Every zoo model loads, its guide matches the model and its estimators serve their sites.

Every file of the zoo is packaged (the wheel's install is tested in test_install.py), and
``$VIGRAD_MODELS`` points the zoo at another folder.

The gradient of the recommended objective is traced abstractly (``jax.eval_shape``), which runs
every vigrad check on the real data without compiling; one zoo model is fitted end to end in
test_cli.py.
"""

import tomllib
from fnmatch import fnmatch
from pathlib import Path

import jax
import numpy as np
import pytest
from numpyro.handlers import seed, trace

import vigrad
from vigrad.zoo import list_models, load_model

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = {
    "bayesian_mlp",
    "bernoulli_mixture",
    "eight_schools",
    "federated_logistic_regression",
    "gaussian_mixture",
    "hierarchical_regression",
    "logistic_regression",
    "vae",
}


def test_the_zoo_has_every_model():
    assert EXPECTED <= set(list_models())


def _param_shapes(name: str, data: dict) -> dict:
    # A fresh load: an autoguide builds its prototype on its first call, here inside eval_shape.
    guide_trace = trace(seed(load_model(name).guide, 0)).get_trace
    return jax.eval_shape(
        lambda: {k: v["value"] for k, v in guide_trace(**data).items() if v["type"] == "param"}
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_zoo_model_traces_with_its_recommended_estimators(name):
    data = dict(load_model(name).load_data())
    for value in data.values():
        assert np.all(np.isfinite(np.asarray(value)))
    params = _param_shapes(name, data)
    zm = load_model(name)
    loss = vigrad.ELBO(num_particles=zm.num_particles, estimators=zm.estimators)
    key = jax.random.key(0)
    grad = jax.eval_shape(jax.grad(lambda p: loss.loss(key, p, zm.model, zm.guide, **data)), params)
    assert jax.tree.map(lambda g: g.shape, grad) == jax.tree.map(lambda p: p.shape, params)
    if zm.reference is not None:
        model_trace = trace(seed(zm.model, 0)).get_trace
        tr = jax.eval_shape(lambda: {k: v["value"] for k, v in model_trace(**data).items()})
        for site, ref in zm.reference["sites"].items():
            assert site in tr, f"reference site {site} not in the model"
            assert len(ref["mean"]) == max(1, int(np.prod(tr[site].shape)))
            # Thinned NUTS draws, so plots show the reference's own marginal, not a Gaussian.
            assert ref["draws"].shape[1] == len(ref["mean"]), site
            np.testing.assert_allclose(ref["draws"].mean(0), ref["mean"], atol=0.2, rtol=0.1)


def test_every_zoo_file_ships_in_the_wheel():
    # Model files are modules of the package; everything else must match a package-data pattern.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["vigrad.zoo.models"]
    zoo = Path(vigrad.zoo.__file__).parent / "models"
    for path in zoo.rglob("*"):
        rel = path.relative_to(zoo)
        if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in rel.parts:
            continue
        assert any(fnmatch(rel.as_posix(), p) for p in patterns), f"{rel} is not package data"


def test_vigrad_models_points_the_zoo_elsewhere(tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text(
        '"""Mine."""\nmodel = guide = print\n\ndef load_data():\n    return {}\n'
    )
    monkeypatch.setenv("VIGRAD_MODELS", str(tmp_path))
    assert list_models() == ["mine"]
    assert load_model("mine").description == "Mine."
