"""docs/benchmarks.md carries measured numbers only: each copied from its folder's RESULTS.md, with
the command written there, and every benchmark folder has its row."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Measured values have a decimal point or an exponent; whole numbers in a row are settings.
MEASURED = re.compile(r"\d+\.\d+(?:e[+-]?\d+)?|\d+e[+-]?\d+")


def _rows() -> list[list[str]]:
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("| ") and "`benchmarks/" in line]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]


def test_every_headline_number_and_command_is_in_its_results_file():
    rows = _rows()
    folders = {row[3].strip("`") for row in rows}
    assert folders == {f"benchmarks/{p.parent.name}/" for p in ROOT.glob("benchmarks/*/RESULTS.md")}
    for what, measured, command, folder in rows:
        results = (ROOT / folder.strip("`") / "RESULTS.md").read_text()
        assert command.strip("`") in results, (what, command)
        numbers = MEASURED.findall(measured)
        assert numbers, what
        for number in numbers:
            assert number in results, (what, number)
