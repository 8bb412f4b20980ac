"""Every Python block in docs/ and the README runs as written, at small sizes.

Blocks of one page run in order in one namespace (a page's later blocks may use its earlier ones),
after the imports every page assumes. Long runs are shortened by capping the number of steps,
samples and estimates that vigrad's entry points are asked for; nothing else is changed. A page in
``OWN_TEST`` runs in the test named there instead, which also checks what the page claims.
"""

import pathlib
import re

import matplotlib
import pytest

import vigrad
import vigrad.sgmcmc

matplotlib.use("Agg")

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted(
    p for p in [*(ROOT / "docs").rglob("*.md"), ROOT / "README.md"] if p.name != "api.md"
)
PRELUDE = """
import jax, jax.numpy as jnp, numpy as np, optax, numpyro, numpyro.distributions as dist
import vigrad
"""


def blocks(page: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


def _capped(fn, name, cap, position):
    def run(*args, **kwargs):
        if name in kwargs:
            kwargs[name] = min(kwargs[name], cap)
        elif len(args) > position:
            args = (*args[:position], min(args[position], cap), *args[position + 1 :])
        return fn(*args, **kwargs)

    return run


# Pages whose blocks train several models each: run under -m slow.
SLOW = {"diagnostics.md", "flows.md"}
# Pages run in full, their claims and quoted outputs checked, by their own test.
OWN_TEST = {"objectives.md": "tests/test_examples_objectives.py"}


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(p, marks=pytest.mark.slow) if p.name in SLOW else p
        for p in PAGES
        if blocks(p) and p.name not in OWN_TEST
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_page_blocks_run(page, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(vigrad, "fit", _capped(vigrad.fit, "num_steps", 60, 4))
    monkeypatch.setattr(
        vigrad.sgmcmc, "sample", _capped(vigrad.sgmcmc.sample, "num_samples", 60, 3)
    )
    monkeypatch.setattr(
        vigrad, "check_unbiased", _capped(vigrad.check_unbiased, "num_samples", 500, 99)
    )
    namespace: dict = {"__name__": "__doc__"}
    exec(PRELUDE, namespace)
    for i, block in enumerate(blocks(page)):
        code = compile(block, f"{page.relative_to(ROOT)} block {i + 1}", "exec")
        exec(code, namespace)
