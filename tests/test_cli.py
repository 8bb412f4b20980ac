"""The `vigrad` command and the zoo loader: the main job end to end (shortened) and its errors."""

import json

import pytest

from vigrad.cli import main
from vigrad.errors import VigradError
from vigrad.zoo import list_models, load_model


def test_fit_eight_schools_writes_results(tmp_path, capsys):
    out = tmp_path / "es"
    code = main(
        [
            "fit",
            "eight_schools",
            "--steps",
            "300",
            "--draws",
            "300",
            "--no-progress",
            "--estimator",
            "mu=score",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "Posterior summary" in text and "PSIS k-hat" in text
    assert "Against the reference posterior" in text
    for name in (
        "summary.csv",
        "inference_data.nc",
        "losses.npy",
        "result.json",
        "loss.png",
        "posterior.png",
    ):
        assert (out / name).is_file(), name
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
            "--no-plots",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 0
    assert "IWELBO(K=4)" in capsys.readouterr().out
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
