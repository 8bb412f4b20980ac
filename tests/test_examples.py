"""The examples run end to end (shortened)."""

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *argv: str) -> None:
    saved = sys.argv
    sys.argv = [name, *argv]
    try:
        runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    finally:
        sys.argv = saved


@pytest.mark.parametrize(
    "name, argv", [("mixture_estimators.py", ["--steps", "40", "--runs", "enumerate"])]
)
def test_example_runs(name, argv, tmp_path, capsys):
    run_example(name, *argv, "--out", str(tmp_path))
    out = capsys.readouterr().out
    assert "wrote" in out
    assert any(p.suffix == ".png" for p in tmp_path.iterdir())
