"""The examples run end to end: at tiny sizes by default, at their own sizes under ``-m slow``
(where the claims their docstrings make are checked against the numbers they print)."""

import re
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


def test_mixture_example_runs(tmp_path, capsys):
    # The run that compiles fastest; its final ELBO is still estimated with Enumerate.
    run_example("mixture_estimators.py", "--steps", "10", "--runs", "score", "--out", str(tmp_path))
    assert "Score(), K=1" in capsys.readouterr().out
    assert (tmp_path / "loss_traces.png").is_file()


@pytest.mark.slow
def test_mixture_example_full_size(tmp_path, capsys):
    run_example("mixture_estimators.py", "--out", str(tmp_path))
    out = capsys.readouterr().out
    elbo = {
        name: float(value)
        for name, value in re.findall(
            r"^(Enumerate\(\)|Score.*?)\s+(-?[\d.]+)\s+[\d.]+$", out, re.M
        )
    }
    assert set(elbo) == {"Enumerate()", "Score(LeaveOneOut()), K=8", "Score(), K=1"}, out
    # Summing the assignments out fits at least as well as sampling them.
    assert elbo["Enumerate()"] >= max(elbo.values()) - 1.0, out
    assert (tmp_path / "loss_traces.png").is_file()


def federated_rows(out: str) -> dict:
    rows = re.findall(r"^\| (\d+) \| (\w+) \| ([-+][\d.]+) \| ([\d.]+) \|$", out, re.M)
    return {(int(t), name): (float(err), float(ratio)) for t, name, err, ratio in rows}


def test_federated_example_runs(tmp_path, capsys):
    plot = tmp_path / "federated.png"
    run_example(
        "federated_non_iid.py", str(plot), "--steps", "200", "--warmup", "50", "--local-steps", "20"
    )
    assert set(federated_rows(capsys.readouterr().out)) == {(20, "DSGLD"), (20, "FSGLD")}
    assert plot.is_file()


@pytest.mark.slow
def test_federated_example_full_size(tmp_path, capsys):
    plot = tmp_path / "federated.png"
    run_example("federated_non_iid.py", str(plot))
    rows = federated_rows(capsys.readouterr().out)
    assert set(rows) == {(t, s) for t in (1, 20, 200) for s in ("DSGLD", "FSGLD")}
    for t in (1, 20, 200):
        # FSGLD stays on the exact posterior for every T; DSGLD is over-dispersed.
        err, ratio = rows[(t, "FSGLD")]
        assert abs(err) < 0.2 and abs(ratio - 1) < 0.1, rows
        assert rows[(t, "DSGLD")][1] > 2.0, rows
    assert rows[(200, "DSGLD")][1] > rows[(1, "DSGLD")][1], rows
    assert plot.is_file()
