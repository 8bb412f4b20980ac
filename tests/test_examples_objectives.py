"""The objectives example runs end to end, shortened (at the paper's schedule under ``-m slow``);
the objectives page's first example trains as described and the error it quotes is the one raised."""

import importlib.util
import math
import re
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "noisy_cone.py"


def load_example():
    spec = importlib.util.spec_from_file_location("noisy_cone", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_noisy_cone_runs_shortened(capsys):
    results = load_example().main(["--steps", "20", "--eval", "0", "--no-progress"])
    out = capsys.readouterr().out
    assert set(results) == {"ELBO", "IWELBO(K=5)", "HVI", "IWHVI(N=5)", "DIWHVI(N=5, K=5)"}
    for name, (mean, se, _, fit_result) in results.items():
        assert name in out
        assert math.isfinite(mean) and math.isfinite(se)
        # A bound on log p(z = 5) never exceeds 0 by much: the likelihood density is at most
        # 1 / sqrt(2 pi 0.1^2) ~ 4, and the prior mass is spread over a scale of 10.
        assert mean < 5.0
        assert fit_result.diverged_at is None


@pytest.mark.slow
def test_noisy_cone_at_the_papers_schedule_matches_its_table(capsys):
    example = load_example()
    results = example.main(["--no-progress"])
    for name, (mean, se, _, fit_result) in results.items():
        # The docs' run is within 0.15 of every value of the paper's Table 4.
        assert abs(mean - example.PAPER[name]) < 0.3, (name, mean, se)
        assert fit_result.diverged_at is None
    values = {name: mean for name, (mean, *_) in results.items()}
    assert values["HVI"] < values["IWHVI(N=5)"] < values["DIWHVI(N=5, K=5)"], values


def test_docs_custom_objective_trains_and_the_quoted_error_is_current(capsys):
    """The page's first block at its full length (tests/test_doc_blocks.py runs every block, with
    fewer steps), and the error message the page quotes, reproduced by the block before it."""
    text = (EXAMPLE.parents[1] / "docs" / "objectives.md").read_text()
    blocks = re.findall(r"```(\w+)\n(.*?)```", text, re.S)
    namespace = {}
    exec(compile(blocks[0][1], "docs/objectives.md", "exec"), namespace)
    result = namespace["result"]
    assert result.diverged_at is None
    # y = 1.5 is far likelier under k = 1 (mean +1) than k = 0 (mean -1).
    assert float(result.params["k_logit"]) > 1.0
    assert 0.5 < float(result.params["loc"]) < 2.0
    quoted = [i for i, (language, _) in enumerate(blocks) if language == "text"]
    assert quoted
    for i in quoted:
        capsys.readouterr()
        exec(compile(blocks[i - 1][1], "docs/objectives.md", "exec"), namespace)
        assert capsys.readouterr().out.strip() == blocks[i][1].strip()
