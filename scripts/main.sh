#!/usr/bin/env bash
# The main job: fit a bundled model, print the posterior summary and diagnostics, write results/
# (replacing the previous run's results there).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec .venv/bin/vigrad fit eight_schools --out results/eight_schools --overwrite "$@"
