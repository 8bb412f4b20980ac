"""vigrad installs from its wheel into a clean environment and its command works there.

Builds the wheel, installs it with its runtime dependencies only (the versions of
requirements.lock, so pip's cache serves them) into a new virtual environment that does not see
this one's packages, then runs the command from a folder outside the repository: the zoo must
ship inside the wheel and load its data without the dev extra (scikit-learn). Needs PyPI; slow.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEV_ONLY = ("sklearn", "pytest", "blackjax", "mkdocs")


def _run(args, cwd, env=None):
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.slow
def test_wheel_installs_and_runs_in_a_clean_environment(tmp_path):
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", wheels, ROOT],
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("vigrad-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    bin_dir = venv / "bin"
    _run(
        [bin_dir / "python", "-m", "pip", "install", "-q", wheel]
        + ["-c", ROOT / "requirements.lock"],
        cwd=tmp_path,
    )
    work = tmp_path / "work"
    work.mkdir()
    # Only the new environment: nothing from this checkout or this virtual environment leaks in.
    leaks = ("PYTHONPATH", "VIRTUAL_ENV", "VIGRAD_MODELS")
    env = {k: v for k, v in os.environ.items() if k not in leaks}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    where = _run(
        [
            bin_dir / "python",
            "-c",
            "import importlib.util as u, sys, vigrad; print(vigrad.__file__);"
            f"sys.exit(any(u.find_spec(m) for m in {DEV_ONLY!r}))",
        ],
        cwd=work,
        env=env,
    )
    assert Path(where.strip()).is_relative_to(venv), where
    assert _run(["vigrad", "--version"], cwd=work, env=env).startswith("vigrad ")
    assert "usage: vigrad" in _run([bin_dir / "python", "-m", "vigrad", "--help"], work, env)
    listed = _run(["vigrad", "models"], cwd=work, env=env)
    assert "eight_schools" in listed and "logistic_regression" in listed
    fit = _run(
        ["vigrad", "fit", "eight_schools", "--steps", "50", "--draws", "100", "--no-progress"],
        cwd=work,
        env=env,
    )
    assert "Against the reference posterior" in fit
    assert (work / "results" / "eight_schools" / "posterior.png").is_file()
    sample = _run(
        ["vigrad", "sample", "logistic_regression", "--kernel", "sgld", "--samples", "100"]
        + ["--warmup", "50", "--chains", "2", "--no-progress", "--out", "sgld"],
        cwd=work,
        env=env,
    )
    assert "Against the reference posterior" in sample
    assert (work / "sgld" / "inference_data.nc").is_file()
