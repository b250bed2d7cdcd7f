"""Redis goes away under a worker: apps keep serving, the agent logs one line per change,
retries, and registers again when Redis is back (a private redis-server on a free port)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis

from apps_registry.control import authority
from tests.support import identity, services
from tests.support.cluster import worker_environ
from tests.support.processes import PYTHON, Process, free_port, gunicorn, http_ok, manage, wait_until
from worker_agent.hosting import local_state

pytestmark = pytest.mark.cluster

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
ENV = "env_r"


def _redis_server(port: int, work_dir) -> subprocess.Popen:
    return subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=work_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture
def private_worker(tmp_path):
    port = free_port()
    server = _redis_server(port, tmp_path)
    client = redis.Redis(port=port, decode_responses=True)
    wait_until(client.ping, timeout=10, message="private redis-server")
    web_port = free_port()
    env = {
        **worker_environ(ENV, web_port),
        "APP_SUPERVISOR_REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "APP_COMMAND_REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "DB_DATABASE": f"{services.RUN_ID}_worker_r",
        "APP_STORAGE_DIR": str(tmp_path / "storage"),
        # No supervisor publishes its key in this Redis: the worker is given it.
        "SUPERVISOR_PUBLIC_KEY": identity.public(authority.key()),
    }
    from tests.support.cluster import _create_database

    _create_database(env["DB_DATABASE"])
    state = {"server": server, "port": port, "tmp": tmp_path}
    web = gunicorn("r-web", web_port, env, tmp_path, workers=1, threads=2).start()
    agent = Process("r-agent", [PYTHON, "manage.py", "run_worker"], env, tmp_path)
    try:
        yield env, client, web, agent, state, f"http://127.0.0.1:{web_port}"
    finally:
        agent.stop()
        web.stop()
        state["server"].kill()
        state["server"].wait(timeout=10)


def test_redis_loss_keeps_apps_serving_and_logs_once(private_worker):
    env, client, web, agent, state, url = private_worker
    app = f"loss_{services.RUN_ID}"
    hosted = manage(["host_app", app, "--modules", "contacts"], env)
    assert hosted.returncode == 0, hosted.stderr
    agent.start()
    lease_keys = f"{env['APP_REDIS_PREFIX']}:lease:{ENV}:*"
    wait_until(lambda: client.keys(lease_keys), timeout=30, message="agent registered (its lease)")
    wait_until(lambda: http_ok(f"{url}/healthz"), timeout=30, message="worker web")
    page = f"{url}/apps/{app}/admin/login/"
    assert _status(page) == 200

    state["server"].kill()
    state["server"].wait(timeout=10)
    wait_until(lambda: "Redis connection lost" in agent.log(), timeout=10, message="loss logged")
    assert _status(page) == 200  # web processes read the local state file only

    # A crash in the middle of a start, then a restart while Redis is still down: the agent
    # finishes the start from the local state file alone.
    agent.kill()
    local_state.set_status(app, "starting", path=Path(env["APP_STORAGE_DIR"]) / "runtime" / f"{ENV}.json")
    wait_until(lambda: _status(page) == 503, timeout=5, message="app shown as starting")
    agent.start()
    wait_until(lambda: _status(page) == 200, timeout=30, message="interrupted start resumed without Redis")
    time.sleep(2)  # a few retries (backoff 0.25, 0.5, 1 s) with Redis still gone
    assert agent.alive()
    this_life = agent.log().split("agent for environment env_r starting")[-1]
    assert "resuming the interrupted start of " + app in this_life
    assert this_life.count("Redis connection lost") == 1
    assert "Traceback" not in agent.log()

    state["server"] = _redis_server(state["port"], state["tmp"])  # back, and empty
    wait_until(lambda: client.keys(lease_keys), timeout=20, interval=0.1, message="registered again")
    wait_until(lambda: "Redis connection restored" in agent.log(), timeout=10, message="restore logged")
    assert agent.log().split("agent for environment env_r starting")[-1].count("Redis connection restored") == 1
    registrations = [
        json.loads(fields["data"])
        for _, fields in client.xrange(f"{env['APP_REDIS_PREFIX']}:events")
        if fields.get("type") == "register"
    ]
    assert registrations and app in registrations[-1]["apps_running"]

    # Commands flow again (the stream and its consumer group were recreated).
    fields = {
        "id": "after-loss",
        "action": "stop",
        "app": app,
        "generation": "1",
        "request_id": "r",
        "issued_at": str(time.time()),
        "expires_at": str(time.time() + 60),
    }
    client.xadd(f"{env['APP_REDIS_PREFIX']}:cmd:{ENV}", identity.signed_command(fields, ENV))
    ack_key = f"{env['APP_REDIS_PREFIX']}:ack:after-loss"
    popped = client.blpop([ack_key], timeout=10)
    assert popped and json.loads(json.loads(popped[1])["data"])["result"] == "ok"
    wait_until(lambda: _status(page) == 503, timeout=5, message="app stopped by the command")
    assert agent.alive()
