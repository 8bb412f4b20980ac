"""The examples run end to end (shortened)."""

import runpy
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *argv: str) -> None:
    saved = sys.argv
    sys.argv = [name, *argv]
    try:
        runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    finally:
        sys.argv = saved


def test_mixture_example_runs(tmp_path, capsys):
    run_example(
        "mixture_estimators.py", "--steps", "40", "--runs", "enumerate", "--out", str(tmp_path)
    )
    assert "Enumerate()" in capsys.readouterr().out
    assert (tmp_path / "loss_traces.png").is_file()


def test_federated_example_runs(tmp_path, capsys):
    plot = tmp_path / "federated.png"
    run_example("federated_non_iid.py", str(plot), "--steps", "400", "--warmup", "100")
    out = capsys.readouterr().out
    assert out.count("| FSGLD |") == 3 and out.count("| DSGLD |") == 3
    assert plot.is_file()
