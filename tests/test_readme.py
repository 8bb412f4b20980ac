"""The README's code runs as written (with fewer steps)."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_block_runs():
    block = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    namespace: dict = {}
    exec(compile(block.replace("3000", "300"), "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.num_steps == 300
    assert set(result.params) == {"m", "s", "p"}


def test_readme_commands_exist():
    text = README.read_text()
    root = README.parent
    for script in re.findall(r"bash (scripts/\S+\.sh)", text):
        assert (root / script).exists(), script
    assert "scripts/test.sh" in (root / ".ci" / "run").read_text()
