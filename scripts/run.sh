#!/usr/bin/env bash
# The whole local cluster in one command (after scripts/setup.sh): Redis, the supervisor
# (web + start queue) and workers env_a and env_b (web + agent each). See scripts/cluster.py.
set -eu
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/cluster.py
