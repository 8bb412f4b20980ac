#!/usr/bin/env bash
# Run the test suite (slow statistical runs are skipped; add `-m slow` to run them).
# Test files run in parallel, one per worker (a file's tests share their compiled functions):
# as many workers as cores; `-n 0` runs everything in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec .venv/bin/python -m pytest -q -n auto --dist loadfile "$@"
