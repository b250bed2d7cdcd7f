"""Standalone (no Redis, no queue worker): a real standalone gunicorn with SQLite. Starts run
in the web process's small thread pool under the per-app file lock; the API, statuses, audit
and last-request-wins behave as on a supervisor."""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.processes import free_port, gunicorn, http_ok, manage, wait_until

SETUP = """
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import User
from apps_registry.registry import actions
from apps_registry.models import ApiToken, Environment
user = User.objects.create_superuser("solo_root", password="x")
env = Environment.objects.get(name="local")  # registered by migrate in standalone mode
actions.create_application(name="broken", environments=[env],
    options={"modules": ["contacts"], "initial_admin": {"username": "a", "password_hash": "plain-text"}})
print(ApiToken.issue(user)[1])
"""


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    storage = tmp_path_factory.mktemp("standalone")
    env = {
        "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",
        "APP_MODE": "standalone",
        "APP_SUPERVISOR_REDIS_URL": "",
        "APP_COMMAND_REDIS_URL": "",
        "DB_DIALECT": "sqlite",
        "DB_STORAGE": str(storage / "registry.sqlite3"),
        "APP_STORAGE_DIR": str(storage),
        "ENVIRONMENT_NAME": "local",
    }
    result = manage(["migrate", "--no-input", "-v", "0"], env)
    assert result.returncode == 0, result.stderr
    result = manage(["shell", "-c", SETUP], env)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    port = free_port()
    web = gunicorn("standalone", port, env, storage, workers=2, threads=4).start()
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=30, interval=0.1)
        yield f"http://127.0.0.1:{port}", token, storage
    finally:
        web.stop()


def _api(base: str, token: str, method: str, path: str, body: dict | None = None):
    request = urllib.request.Request(
        f"{base}/api/v1{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def _status(base: str, token: str, name: str) -> tuple[str, str]:
    _code, body = _api(base, token, "GET", f"/apps/{name}")
    return body["statuses"]["local"], body["errors"].get("local", "")


def test_standalone_starts_in_process_and_last_request_wins(standalone):
    base, token, storage = standalone
    status, body = _api(base, token, "POST", "/apps", {"name": "solo", "environments": ["local"], "start": True})
    assert status == 201, body
    wait_until(lambda: _status(base, token, "solo")[0] == "running", timeout=60, interval=0.1)
    # A quick start/stop/start, answered by either web process: the last request decides.
    for operation in ("stop", "start", "stop", "start"):
        assert _api(base, token, "POST", f"/apps/solo/{operation}")[0] == 202
    wait_until(lambda: _status(base, token, "solo")[0] == "running", timeout=60, interval=0.1)
    assert _api(base, token, "POST", "/apps/solo/stop")[0] == 202
    wait_until(lambda: _status(base, token, "solo")[0] == "stopped", timeout=30, interval=0.1)
    with sqlite3.connect(Path(storage) / "apps" / "solo.sqlite3") as conn:
        rows = conn.execute("SELECT started_at, finished_at FROM appsup_initialisation ORDER BY started_at").fetchall()
    assert rows
    for (_s1, end1), (start2, _e2) in zip(rows, rows[1:], strict=False):
        assert start2 >= end1, rows


def test_standalone_start_error_is_visible_and_retryable(standalone):
    base, token, _storage = standalone
    assert _api(base, token, "POST", "/apps/broken/start")[0] == 202
    status, error = wait_until(
        lambda: (s := _status(base, token, "broken"))[0] == "error" and s, timeout=60, interval=0.1
    )
    assert "password hash" in error
    # Retrying is accepted and queued again (and fails again for the same reason).
    status, body = _api(base, token, "POST", "/apps/broken/start")
    assert status == 202 and body["app"] == "broken"
