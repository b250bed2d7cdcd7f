"""/healthz, /readyz and /metrics on every role, served by real gunicorn processes started
the way the container starts them: ``compose/entrypoint.sh`` (migrations, static files, then
gunicorn plus the start queue on a supervisor, plus the agent on a worker). SIGTERM to the
entrypoint alone — what ``docker stop`` sends to PID 1 — must stop every process it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support import services
from tests.support.processes import ROOT, Process, free_port, wait_until

pytestmark = pytest.mark.cluster

TOKEN = "ops-metrics-token"
ROLES = ("supervisor", "worker", "standalone")


def _role_env(role: str, port: int, storage: Path) -> dict[str, str]:
    env = {
        "APP_MODE": role,
        "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",
        "PORT": str(port),
        "GUNICORN_WORKERS": "1",
        "GUNICORN_THREADS": "2",
        "GUNICORN_GRACEFUL_TIMEOUT": "5",
        "SECRET_KEY": "ops-test-secret-key",
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DB_DIALECT": "sqlite",
        "DB_STORAGE": str(storage / "db.sqlite3"),
        "APP_STORAGE_DIR": str(storage),
        "APP_DB_PREFIX": f"{services.RUN_ID}_",
        "METRICS_TOKEN": TOKEN,
        "METRICS_ALLOWED_IPS": "",
        "PROMETHEUS_MULTIPROC_DIR": str(storage / "metrics"),
        "ADMIN_USERNAME": "ops",
        "ADMIN_PASSWORD": "ops-password",
        "PATH": f"{ROOT}/.venv/bin:{os.environ.get('PATH', '')}",
        "APP_SUPERVISOR_REDIS_URL": "",
        "APP_COMMAND_REDIS_URL": "",
        "DB_DATABASE": "",
    }
    if role != "standalone":
        env["APP_SUPERVISOR_REDIS_URL"] = services.redis_url()
        env["APP_COMMAND_REDIS_URL"] = services.redis_url()
        env["APP_REDIS_PREFIX"] = f"{services.RUN_ID}:ops"
    if role == "worker":
        env.update(ENVIRONMENT_NAME="ops_env", ENVIRONMENT_URL=f"http://127.0.0.1:{port}")
    return env


def _get(url: str, token: str = "") -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read().decode()


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


@pytest.fixture(scope="module")
def roles(tmp_path_factory):
    """One container-like process tree per role, started side by side."""
    started: dict[str, tuple[Process, int]] = {}
    log_dir = tmp_path_factory.mktemp("ops-logs")
    for role in ROLES:
        port = free_port()
        storage = tmp_path_factory.mktemp(f"ops-{role}")
        process = Process(f"ops-{role}", [str(ROOT / "compose" / "entrypoint.sh"), "all"], {}, log_dir)
        process.env = _role_env(role, port, storage)
        started[role] = (process.start(), port)
    try:
        for role, (process, port) in started.items():
            wait_until(
                lambda p=process, port=port: (not p.alive() or _get(f"http://127.0.0.1:{port}/readyz")[0] == 200),
                timeout=90,
                message=f"{role} to be ready",
            )
            assert process.alive(), process.log()[-3000:]
        yield started
    finally:
        for process, _port in started.values():
            process.stop(timeout=20)


@pytest.mark.parametrize("role", ROLES)
def test_health_readiness_and_metrics_on_every_role(roles, role):
    process, port = roles[role]
    base = f"http://127.0.0.1:{port}"

    status, _, body = _get(f"{base}/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})

    status, _, body = _get(f"{base}/readyz")
    checks = json.loads(body)["checks"]
    assert status == 200
    assert checks["database"] == "ok"
    assert checks.get("redis") == ("ok" if role != "standalone" else None)

    status, _, body = _get(f"{base}/metrics")
    assert status == 403 and "METRICS_TOKEN" in body
    assert _get(f"{base}/metrics", token="wrong")[0] == 403

    status, content_type, body = _get(f"{base}/metrics", token=TOKEN)
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    assert "appsup_scrape_duration_seconds" in body
    if role == "worker":
        assert "appsup_hosted_apps 0.0" in body
        assert 'appsup_local_apps{environment="ops_env",status="running"} 0.0' in body
    else:
        assert 'appsup_environments{status="online"}' in body
        assert "appsup_start_queue_waiting 0.0" in body
        assert "appsup_start_queue_oldest_wait_seconds 0.0" in body
    if role == "supervisor":
        assert "appsup_start_queue_jobs 0.0" in body

    # The processes the entrypoint runs beside gunicorn for this role (they may still be
    # booting when the web server is ready).
    expected = {
        "supervisor": ["Booting worker", "started queue", "Listening on app_starts"],
        "worker": ["Booting worker", "started agent", "agent for environment ops_env starting"],
        "standalone": ["Booting worker"],
    }[role]
    wait_until(lambda: all(text in process.log() for text in expected), timeout=30, message=f"{expected} in log")


def test_sigterm_to_the_entrypoint_stops_everything_it_started(roles):
    # Last in the module: stops the processes the other tests used.
    for role in ROLES:
        process, _port = roles[role]
        assert process.popen is not None
        pgid = process.popen.pid
        assert len(_group_members(pgid)) >= 2  # gunicorn master and worker at least
        process.popen.send_signal(signal.SIGTERM)  # only PID "1", as docker stop does
        try:
            code = process.popen.wait(timeout=25)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{role} entrypoint did not stop on SIGTERM:\n{process.log()[-3000:]}") from None
        assert code == 0, process.log()[-3000:]
        wait_until(lambda g=pgid: not _group_members(g), timeout=5, message=f"{role}'s processes to exit")
