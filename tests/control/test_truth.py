"""What the supervisor reports is true, on the real cluster (supervisor gunicorn, workers
env_a/env_b with their agents, a real ``rqworker app_starts``), driven through the API:

- ``stopped`` is reported only once the worker's web processes refuse the app: the first
  request through the proxy after the status reads ``stopped`` is a 503, never a 200;
- a name deleted and created again is a new app (a new incarnation): "start now" runs it at
  the first start, and the audit says ``ok`` only because it runs.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse

import pytest

from tests.control.test_queue import ENVS, Api, QueueWorkers, wait_audit_closed
from tests.support.processes import wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def queue_worker(cluster, tmp_path_factory):
    pool = QueueWorkers(cluster, tmp_path_factory.mktemp("truth-queue"))
    pool.start(1)
    yield pool
    pool.stop_all()


def _get(base: str, path: str) -> int:
    """One GET without following redirects; the status code."""
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_the_first_request_after_stopped_is_refused(api: Api, queue_worker, cluster_logs):
    cluster = cluster_logs
    name = "truth_stop"
    page = f"/apps/{name}/admin/login/"
    status, body = api("POST", "/apps", {"name": name, "environments": ["env_a"], "start": True})
    assert status == 201, body
    served_after_stopped: list[tuple[int, int]] = []
    for cycle in range(6):
        api.wait_statuses(name, {"env_a": "running"}, timeout=60)
        wait_until(lambda: _get(cluster.url, page) == 200, timeout=10, interval=0.05, message=f"{name} serves")
        # Keep both web processes of the worker serving (their state caches warm) while it stops.
        hammering = threading.Event()

        def hammer(hammering: threading.Event = hammering) -> None:
            while not hammering.is_set():
                _get(cluster.env_a.url, page)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.2)  # let the hammer reach both web processes before the stop
            assert api("POST", f"/apps/{name}/stop")[0] == 202
            wait_until(
                lambda: api.statuses(name)["statuses"]["env_a"] == "stopped",
                timeout=30,
                interval=0.005,
                message=f"{name} stopped",
            )
            # Right after the status says stopped: through the proxy and at the worker itself.
            for _ in range(3):
                for code in (_get(cluster.url, page), _get(cluster.env_a.url, page)):
                    if code != 503:
                        served_after_stopped.append((cycle, code))
        finally:
            hammering.set()
            for thread in threads:
                thread.join(timeout=15)
        if cycle < 5:
            assert api("POST", f"/apps/{name}/start")[0] == 202
    assert served_after_stopped == []


def _hosted_here(worker, name: str) -> bool:
    """The app is in the worker's local state file (what its web processes serve from)."""
    try:
        return name in json.loads(worker.state_file.read_text()).get("apps", {})
    except (FileNotFoundError, ValueError):
        return False


def test_a_name_deleted_and_created_again_starts_at_the_first_start(api: Api, queue_worker, cluster_logs):
    cluster = cluster_logs
    name = "truth_again"
    everywhere = dict.fromkeys(ENVS, "running")
    status, body = api("POST", "/apps", {"name": name, "environments": ENVS, "start": True})
    assert status == 201, body
    api.wait_statuses(name, everywhere, timeout=60)
    assert wait_audit_closed(cluster, body["request_id"], timeout=60) == ("ok", "")
    # A few more requests, so that the deleted app's generation is well ahead of a new app's.
    for operation in ("stop", "start"):
        assert api("POST", f"/apps/{name}/{operation}")[0] == 202
        api.wait_statuses(name, dict.fromkeys(ENVS, "stopped" if operation == "stop" else "running"), timeout=60)
    assert api("DELETE", f"/apps/{name}")[0] == 204
    for worker in cluster.workers.values():  # the workers carried the delete's remove out
        wait_until(lambda w=worker: not _hosted_here(w, name), timeout=30, interval=0.05, message=f"{name} removed")

    status, body = api("POST", "/apps", {"name": name, "environments": ENVS, "start": True})
    assert status == 201, body
    # The first start runs the new app everywhere, and its audit entry says ok because it runs.
    assert wait_audit_closed(cluster, body["request_id"], timeout=90) == ("ok", "")
    assert api.statuses(name)["statuses"] == everywhere
    for worker in cluster.workers.values():
        state = json.loads(worker.state_file.read_text())["apps"][name]
        assert state["status"] == "running"
        assert state["generation"] == 1  # the new app's own first request, not superseded
    # A stop of the new app still works (its commands are not taken for the deleted app's).
    assert api("POST", f"/apps/{name}/stop")[0] == 202
    api.wait_statuses(name, dict.fromkeys(ENVS, "stopped"), timeout=60)
