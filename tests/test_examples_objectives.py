"""The objectives example runs end to end, shortened."""

import importlib.util
import math
import re
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "noisy_cone.py"


def load_example():
    spec = importlib.util.spec_from_file_location("noisy_cone", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_noisy_cone_runs_shortened(capsys):
    results = load_example().main(["--steps", "20", "--eval", "0", "--no-progress"])
    out = capsys.readouterr().out
    assert set(results) == {"ELBO", "IWELBO(K=5)", "HVI", "IWHVI(M=5)", "DIWHVI(M=5, K=5)"}
    for name, (mean, se, _, fit_result) in results.items():
        assert name in out
        assert math.isfinite(mean) and math.isfinite(se)
        # A bound on log p(z = 5) never exceeds 0 by much: the likelihood density is at most
        # 1 / sqrt(2 pi 0.1^2) ~ 4, and the prior mass is spread over a scale of 10.
        assert mean < 5.0
        assert fit_result.diverged_at is None


def test_docs_custom_objective_example_runs():
    text = (EXAMPLE.parents[1] / "docs" / "objectives.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    namespace = {}
    exec(compile(code, "docs/objectives.md", "exec"), namespace)
    result = namespace["result"]
    assert result.diverged_at is None
    # y = 1.5 is far likelier under k = 1 (mean +1) than k = 0 (mean -1).
    assert float(result.params["k_logit"]) > 1.0
    assert 0.5 < float(result.params["loc"]) < 2.0
