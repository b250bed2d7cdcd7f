"""Failover on the real cluster: env_a (agent and web) is frozen with SIGSTOP; once it has been
offline for the grace, the queue worker's sweep places the failover app on env_b and starts it
there through the queue; thawed, env_a unloads it (the placement moved), so it runs in one place.

The grace is short for this test's own queue worker only (APP_FAILOVER_GRACE=6, twice the
cluster's APP_OFFLINE_AFTER=3); the sweep runs every APP_START_LOCK_TTL (2 s)."""

from __future__ import annotations

import http.client
import json
import signal
import urllib.parse

import psycopg
import pytest

from tests.control.test_queue import Api, QueueWorkers
from tests.support import services
from tests.support.cluster import OFFLINE_AFTER
from tests.support.processes import wait_until

pytestmark = pytest.mark.cluster
GRACE = 2 * OFFLINE_AFTER


@pytest.fixture(scope="module")
def queue_worker(cluster, tmp_path_factory):
    pool = QueueWorkers(cluster, tmp_path_factory.mktemp("failover-queue"))
    pool.start(1, APP_FAILOVER_GRACE=str(GRACE))
    yield pool
    pool.stop_all()


def _get(base: str, path: str) -> tuple[int, str | None]:
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("X-App-Environment")
    finally:
        conn.close()


def _hosted_here(worker, name: str) -> str | None:
    """The app's status in the worker's own runtime state file (None: not there at all)."""
    try:
        apps = json.loads(worker.state_file.read_text()).get("apps", {})
    except (OSError, ValueError):
        return "unreadable"
    return (apps.get(name) or {}).get("status")


def test_an_app_fails_over_after_the_grace_and_the_returning_environment_does_not_run_it(
    api: Api, queue_worker, cluster_logs
):
    cluster = cluster_logs
    name = "failover_app"
    page = f"/apps/{name}/admin/login/"
    status, body = api("POST", "/apps", {"name": name, "environments": ["env_a"], "start": True, "failover": True})
    assert status == 201 and body["failover"] is True, body
    api.wait_statuses(name, {"env_a": "running"}, timeout=60)
    assert _hosted_here(cluster.env_a, name) == "running"
    frozen = [cluster.env_a.agent, cluster.env_a.web]
    for process in frozen:
        process.signal(signal.SIGSTOP)
    try:
        # Offline after 3 s, then the grace, then a sweep: the app is placed on env_b and runs.
        moved = api.wait_statuses(name, {"env_b": "running"}, timeout=45)
        assert moved["environments"] == ["env_b"]
        assert wait_until(lambda: _get(cluster.url, page) == (200, "env_b"), timeout=10, message="served by env_b")
    finally:
        for process in frozen:
            process.signal(signal.SIGCONT)
    # env_a is back: it no longer runs the app (its remove command, or its reconciliation).
    wait_until(lambda: _hosted_here(cluster.env_a, name) is None, timeout=30, message=f"{name} unloaded on env_a")
    cluster.env_a.wait_registered()
    assert _get(cluster.env_a.url, page)[0] == 404
    body = api.statuses(name)
    assert (body["environments"], body["statuses"]) == (["env_b"], {"env_b": "running"})
    assert _get(cluster.url, page) == (200, "env_b")
    # Audited as a failover, once, in the supervisor's registry.
    with psycopg.connect(
        host=services.PG_HOST,
        port=services.PG_PORT,
        user=services.PG_USER,
        dbname=cluster.supervisor_env["DB_DATABASE"],
    ) as conn:
        rows = conn.execute(
            "SELECT action, environments::text FROM apps_registry_auditentry WHERE app_name = %s AND via = 'failover'"
            " ORDER BY id",
            (name,),
        ).fetchall()
    assert [action for action, _envs in rows] == ["remove", "set_environments", "start", "failover"], rows
    assert json.loads(rows[-1][1]) == ["env_a", "env_b"]
