#!/usr/bin/env bash
# Create (once) the local virtual environment .venv with the pinned dependencies and vigrad itself.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.vigrad-installed
if [ ! -f "$stamp" ] || [ requirements.lock -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -r requirements.lock
    .venv/bin/python -m pip install --quiet --no-deps -e .
    touch "$stamp"
fi
