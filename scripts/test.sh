#!/usr/bin/env bash
# Run the test suite (slow statistical runs are skipped; add `-m slow` to run them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec .venv/bin/python -m pytest -q "$@"
