"""The objectives example runs end to end, shortened (at the paper's schedule under ``-m slow``);
the objectives page runs as written, its first example trains as described and the error it quotes
is the one raised."""

import importlib.util
import math
import re
from pathlib import Path

import pytest

import vigrad
from tests.test_doc_blocks import PRELUDE, _capped

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "noisy_cone.py"


def load_example():
    spec = importlib.util.spec_from_file_location("noisy_cone", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_noisy_cone_runs_shortened(capsys, monkeypatch):
    example = load_example()
    # One objective per guide, each a compilation of its own: the mean-field IWELBO, and DIWHVI,
    # whose particles run the marginal_log_weight that HVI and IWHVI run at the top level. All five
    # train at the paper's schedule under -m slow.
    shortened = ("IWELBO(K=5)", "DIWHVI(N=5, K=5)")
    monkeypatch.setattr(example, "RUNS", {name: example.RUNS[name] for name in shortened})
    results = example.main(["--steps", "20", "--eval", "0", "--no-progress"])
    out = capsys.readouterr().out
    assert set(results) == set(shortened)
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


def test_objectives_page_runs_trains_as_described_and_quotes_the_current_error(
    capsys, monkeypatch, tmp_path
):
    """Every Python block of docs/objectives.md in order in one namespace, at the page's own sizes
    (only ``check_unbiased`` is capped, as in tests/test_doc_blocks.py): the first example trains
    as described, and each quoted output is what the block before it prints."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        vigrad, "check_unbiased", _capped(vigrad.check_unbiased, "num_samples", 500, 99)
    )
    text = (EXAMPLE.parents[1] / "docs" / "objectives.md").read_text()
    blocks = re.findall(r"```(\w+)\n(.*?)```", text, re.S)
    assert [language for language, _ in blocks].count("text") >= 1
    namespace: dict = {"__name__": "__doc__"}
    exec(PRELUDE, namespace)
    printed = None
    for i, (language, code) in enumerate(blocks):
        if language == "text":
            assert printed is not None and printed.strip() == code.strip(), f"block {i + 1}"
        elif language == "python":
            capsys.readouterr()
            exec(compile(code, f"docs/objectives.md block {i + 1}", "exec"), namespace)
            printed = capsys.readouterr().out
        if i == 0:
            result = namespace["result"]
            assert result.diverged_at is None
            # y = 1.5 is far likelier under k = 1 (mean +1) than k = 0 (mean -1).
            assert float(result.params["k_logit"]) > 1.0
            assert 0.5 < float(result.params["loc"]) < 2.0
