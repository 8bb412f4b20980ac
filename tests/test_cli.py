"""The `vigrad` command and the zoo loader: the main job end to end (shortened) and its errors."""

import ast
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

import vigrad
from vigrad.cli import build_parser, main
from vigrad.errors import VigradError
from vigrad.zoo import list_models, load_model, models_dir


def test_fit_eight_schools_writes_results(tmp_path, capsys):
    out = tmp_path / "es"
    out.mkdir()
    (out / "loss.png").write_text("an earlier run's plot")
    # Without plots: drawing ten sites' panels costs more than the fit; the plots are written in
    # test_fit_user_file_with_iwelbo, and drawn with a reference in tests/test_posterior_plots.py.
    code = main(
        [
            "fit",
            "eight_schools",
            "--steps",
            "300",
            "--draws",
            "300",
            "--no-progress",
            "--no-plots",
            "--estimator",
            "mu=score",
            "--out",
            str(out),
            "--overwrite",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "Posterior summary" in text and "PSIS k-hat" in text
    assert "Against the reference posterior" in text
    for name in ("summary.csv", "inference_data.nc", "losses.npy", "result.json"):
        assert (out / name).is_file(), name
    assert not (out / "loss.png").exists()  # not left beside the new results
    record = json.loads((out / "result.json").read_text())
    assert record["steps"] == 300 and "Score" in record["estimators"]["mu"]
    import arviz as az

    idata = az.from_netcdf(str(out / "inference_data.nc"))
    assert idata.posterior["tau"].shape == (4, 75)
    assert float(idata.posterior["tau"].min()) > 0.0


USER_MODEL = (
    '"""A normal mean."""\n'
    "import jax.numpy as jnp, numpyro, numpyro.distributions as dist\n"
    "def load_data():\n    return {'x': jnp.array([0.5, 1.5, 1.0])}\n"
    "def model(x):\n    m = numpyro.sample('m', dist.Normal(0., 1.))\n"
    "    with numpyro.plate('n', 3):\n        numpyro.sample('x', dist.Normal(m, 1.), obs=x)\n"
    "def guide(x):\n    a = numpyro.param('a', 0.)\n"
    "    numpyro.sample('m', dist.Normal(a, 0.5))\n"
)


def test_fit_user_file_with_iwelbo(tmp_path, capsys):
    src = tmp_path / "mine.py"
    src.write_text(USER_MODEL)
    code = main(
        [
            "fit",
            str(src),
            "--objective",
            "iwelbo",
            "--particles",
            "4",
            "--steps",
            "200",
            "--draws",
            "100",
            "--no-progress",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 0
    assert "IWELBO(K=4)" in capsys.readouterr().out
    for name in ("loss.png", "posterior.png"):
        assert (tmp_path / "o" / name).is_file(), name
    # Exact posterior mean of m is sum(x) / (n + 1) = 0.75.
    params = json.loads((tmp_path / "o" / "result.json").read_text())["params"]
    assert abs(params["a"] - 0.75) < 0.15


def test_compare_prints_the_table_and_the_choice(tmp_path, capsys):
    src = tmp_path / "mine.py"
    src.write_text(USER_MODEL)
    code = main(
        [
            "compare",
            str(src),
            "--warmup-steps",
            "0",
            "--samples",
            "32",
            "--no-plots",
            "--out",
            str(tmp_path / "c"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "PathGradient" in out and "Score(MovingAverage)" in out
    assert "m: " in out  # the choice for site m, with its reason
    assert (tmp_path / "c" / "comparison.txt").is_file()
    words = shlex.split(out.strip().splitlines()[-1])
    assert words[:3] == ["vigrad", "fit", str(src)] and "--estimator" in words
    chosen = build_parser().parse_args(words[1:]).estimator
    assert [c.split("=")[0] for c in chosen] == ["m"]


def test_sample_runs_sgld_on_a_zoo_model(tmp_path, capsys):
    out = tmp_path / "s"
    argv = [
        "sample",
        "logistic_regression",
        "--step-size",
        "0.003",
        "--samples",
        "200",
        "--warmup",
        "100",
        "--chains",
        "2",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "SGLD(step_size=0.003)" in text and "r_hat" in text
    assert "WARNING: NOT CONVERGED" in text  # 200 steps of 2 chains are far too few
    assert (out / "inference_data.nc").is_file()


def test_sample_needs_a_data_plate(tmp_path, capsys):
    src = tmp_path / "mine.py"
    src.write_text(USER_MODEL)
    assert main(["sample", str(src), "--no-progress", "--out", str(tmp_path)]) == 2
    assert "declares no DATA_PLATE" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "no_such_model"], "Unknown model 'no_such_model'"),
        (["fit", "eight_schools", "--estimator", "tau=magic"], "Unknown estimator 'magic'"),
        (["fit", "eight_schools", "--estimator", "tau"], "SITE=NAME"),
        (["fit", "eight_schools", "--estimator", "nope=path", "--steps", "10"], "'nope'"),
    ],
)
def test_cli_errors_name_the_problem(argv, message, capsys, tmp_path):
    assert main([*argv, "--no-progress", "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_zoo_lists_and_rejects_incomplete_files(tmp_path):
    assert "eight_schools" in list_models()
    bad = tmp_path / "bad.py"
    bad.write_text("def model():\n    pass\n")
    with pytest.raises(VigradError, match="lacks guide, load_data"):
        load_model(str(bad))


def _imported_modules(argv: list[str]) -> tuple[set[str], float]:
    """The top-level modules ``python -m vigrad ARGV`` imports, and its wall time in seconds."""
    command = [sys.executable, "-X", "importtime", "-m", "vigrad", *argv]
    t0 = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - t0
    names = {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in run.stderr.splitlines()
        if line.startswith("import time:")
    }
    return names, seconds


@pytest.mark.parametrize("argv", [["--help"], ["fit", "--help"], ["models"]])
def test_help_and_models_do_not_start_jax(argv):
    names, seconds = _imported_modules(argv)
    print(f"python -m vigrad {' '.join(argv)}: {seconds:.2f} s")
    assert not names & {"jax", "numpyro", "arviz", "matplotlib"}, argv


def test_lazy_public_names_match_the_type_checking_imports():
    tree = ast.parse(Path(vigrad.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If))  # if TYPE_CHECKING:
    imported = {
        alias.name: node.module
        for node in block.body
        for alias in node.names
        if node.module != "vigrad"
    }
    assert imported == vigrad._MODULE_OF
    assert set(vigrad.__all__) <= set(dir(vigrad))
    for name in vigrad.__all__:
        assert getattr(vigrad, name) is not None, name


@pytest.mark.parametrize(
    "argv, option",
    [
        (["fit", "m", "--particles", "0"], "--particles"),
        (["fit", "m", "--steps", "0"], "--steps"),
        (["fit", "m", "--lr", "-1"], "--lr"),
        (["fit", "m", "--lr", "nan"], "--lr"),
        (["fit", "m", "--draws", "0"], "--draws"),
        (["fit", "m", "--draws", "301"], "--draws"),
        (["fit", "m", "--alpha", "1"], "--alpha"),
        (["fit", "m", "--seed", "-3"], "--seed"),
        (["compare", "m", "--samples", "1"], "--samples"),
        (["compare", "m", "--warmup-steps", "-1"], "--warmup-steps"),
        (["sample", "m", "--chains", "0"], "--chains"),
        (["sample", "m", "--chains", "-2"], "--chains"),
        (["sample", "m", "--samples", "0"], "--samples"),
        (["sample", "m", "--batch-size", "0"], "--batch-size"),
        (["sample", "m", "--step-size", "0"], "--step-size"),
        (["sample", "m", "--thinning", "0"], "--thinning"),
        (["sample", "m", "--samples", "4", "--thinning", "5"], "--thinning"),
    ],
)
def test_bad_option_values_are_refused_by_name(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: must be" in err, err


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in (
        "(default: elbo)",
        "(default: 2000)",
        "(default: 0)",
        "(default: the model's NUM_PARTICLES",
        "(default: the model's STEPS)",
        "(default: results/MODEL)",
    ):
        assert shown in text, shown


def test_earlier_results_are_not_overwritten(tmp_path, capsys):
    (tmp_path / "result.json").write_text("{}")
    assert main(["fit", "eight_schools", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "result.json" in err and "--overwrite" in err
    assert (tmp_path / "result.json").read_text() == "{}"


def test_models_are_listed_in_aligned_columns(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = list_models()
    width = max(map(len, names)) + 2
    firsts = [line for line in lines if not line.startswith(" ")]
    assert [line.split()[0] for line in firsts] == names
    for line in lines:
        assert line[width - 2 : width] == "  " and line[width] != " ", line


def test_a_misspelt_model_gets_a_suggestion(tmp_path, capsys):
    assert main(["fit", "eight_school", "--out", str(tmp_path)]) == 2
    assert "Did you mean eight_schools?" in capsys.readouterr().err


def test_zoo_files_declare_no_sgmcmc_step_size():
    # `vigrad sample` chooses the step size with a pilot run per kernel; a fixed one would be
    # read by nothing.
    for name in list_models():
        assert "SGMCMC_STEP_SIZE" not in (models_dir() / f"{name}.py").read_text(), name


def test_the_command_reads_the_name_registry(capsys):
    from vigrad.cli import OBJECTIVE_NAMES
    from vigrad.registry import ESTIMATORS, KERNELS, OBJECTIVES

    assert set(OBJECTIVE_NAMES) <= set(OBJECTIVES)
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert "{" + ",".join(KERNELS) + "}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert ", ".join(ESTIMATORS) in " ".join(capsys.readouterr().out.split())
