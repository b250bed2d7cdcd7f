#!/usr/bin/env bash
# Run App Supervisor standalone on this machine with embedded defaults (SQLite, no Redis).
set -eu
cd "$(dirname "$0")/.."
export APP_MODE="${APP_MODE:-standalone}"
export DEBUG="${DEBUG:-true}"
PORT="${PORT:-8000}"
py=.venv/bin/python
$py manage.py migrate --noinput >/dev/null
$py manage.py ensure_admin
echo "App Supervisor (standalone) on http://127.0.0.1:${PORT}/admin/"
exec $py -m gunicorn supervisor_site.wsgi:application --bind "127.0.0.1:${PORT}" --workers 2 --threads 4 --no-control-socket
