#!/usr/bin/env bash
# The whole test command: set-up, services, lint and format check, then every test.
set -eu
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
# tests/e2e drives Debian's chromium; install it when missing (the test says so in one line if it cannot be had)
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "scripts/test.sh: could not install chromium with apt-get" >&2
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports --no-cache
.venv/bin/python -m pytest "$@"
