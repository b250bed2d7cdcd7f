#!/usr/bin/env bash
# The whole test command: set-up, services, lint and format check, then every test.
set -eu
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
