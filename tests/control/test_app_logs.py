"""Per-app logs on the real cluster: a worker's web processes append each hosted request (and
each exception) of an app to its capped stream, its agent the app's start; the live
supervisor's API returns them with ``since`` paging; hosted responses name their environment."""

from __future__ import annotations

import http.client
import urllib.parse

import psycopg
import pytest

from apps_registry.control import keys, redis_client
from tests.control.test_queue import Api, QueueWorkers
from tests.support import services
from tests.support.cluster import APP_LOG_LINES
from tests.support.processes import wait_until

pytestmark = pytest.mark.cluster
# Redis trims a MAXLEN ~ stream by whole nodes (stream-node-max-entries, 100 by default).
TRIM_SLACK = 100


@pytest.fixture(scope="module")
def queue_worker(cluster, tmp_path_factory):
    pool = QueueWorkers(cluster, tmp_path_factory.mktemp("logs-queue"))
    pool.start(1)
    yield pool
    pool.stop_all()


def _get(base: str, path: str, headers: dict | None = None) -> http.client.HTTPResponse:
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response
    finally:
        conn.close()


def _body(base: str, path: str) -> str:
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def _lines(api: Api, name: str, query: str = "") -> list[dict]:
    status, body = api("GET", f"/apps/{name}/logs{query}")
    assert status == 200, body
    return body["lines"]


def test_requests_errors_and_starts_reach_the_app_log_and_the_api(api: Api, queue_worker, cluster_logs):
    cluster = cluster_logs
    name = "logs_app"
    page = f"/apps/{name}/admin/login/"
    status, body = api("POST", "/apps", {"name": name, "environments": ["env_a"], "start": True})
    assert status == 201, body
    api.wait_statuses(name, {"env_a": "running"}, timeout=60)
    wait_until(lambda: _get(cluster.env_a.url, page).status == 200, timeout=10, message=f"{name} serves")

    # Which environment served: on the worker's answer, and through the supervisor's proxy.
    assert _get(cluster.env_a.url, page).getheader("X-App-Environment") == "env_a"
    assert _get(cluster.url, page).getheader("X-App-Environment") == "env_a"
    # And the hosted admin says it, beside its title.
    assert 'class="appsup-served-by"' in _body(cluster.url, page)
    assert "on env_a</small>" in _body(cluster.url, page)

    # The agent's start, then the requests with their status and duration.
    lines = wait_until(
        lambda: [line for line in _lines(api, name) if line["message"].startswith(f"GET {page} 200 ")],
        timeout=10,
        message="request lines",
    )
    assert all(line["environment"] == "env_a" and line["level"] == "info" for line in lines)
    assert lines[0]["message"].endswith("ms")
    every = _lines(api, name, "?environment=env_a")
    assert any(line["message"].startswith("started: database") for line in every), every

    # Paging with since: the lines after the last one seen, and only those.
    last = _lines(api, name)[-1]["id"]
    assert _lines(api, name, f"?since={last}") == []
    _get(cluster.env_a.url, page + "?after")
    newer = wait_until(lambda: _lines(api, name, f"?since={last}"), timeout=10, message="lines after since")
    assert [line["message"].split(" ")[:3] for line in newer] == [["GET", page, "200"]]

    # An exception in a hosted request: its sessions table is gone, a session cookie makes the
    # admin read it. One error line with the exception's type, no traceback.
    with psycopg.connect(
        host=services.PG_HOST, port=services.PG_PORT, user=services.PG_USER, dbname=f"{services.RUN_ID}_{name}"
    ) as conn:
        conn.execute("DROP TABLE django_session")
    cookie = {"Cookie": f"app_{name}_sessionid={'a' * 32}"}
    assert _get(cluster.env_a.url, f"/apps/{name}/admin/", cookie).status == 500
    errors = wait_until(
        lambda: [line for line in _lines(api, name) if line["level"] == "error"],
        timeout=10,
        message="error lines",
    )
    raised = [line["message"] for line in errors if " raised " in line["message"]]
    assert raised and raised[0].startswith(f"GET /apps/{name}/admin/ raised ProgrammingError: "), errors
    assert "Traceback" not in raised[0] and "\n" not in raised[0]
    assert any(line["message"].startswith(f"GET /apps/{name}/admin/ 500 ") for line in errors), errors


def test_the_app_log_stays_bounded_after_many_requests(api: Api, queue_worker, cluster_logs):
    cluster = cluster_logs
    name = "logs_many"
    page = f"/apps/{name}/admin/login/"
    status, body = api("POST", "/apps", {"name": name, "environments": ["env_a"], "start": True})
    assert status == 201, body
    api.wait_statuses(name, {"env_a": "running"}, timeout=60)
    wait_until(lambda: _get(cluster.env_a.url, page).status == 200, timeout=10, message=f"{name} serves")
    requests = 4 * (APP_LOG_LINES + TRIM_SLACK)
    for i in range(requests):
        _get(cluster.env_a.url, f"{page}?n={i}")
    stream = keys.app_log(name, "env_a")
    # A last request of its own path: once its line is in, every earlier one has been written.
    _get(cluster.env_a.url, f"/apps/{name}/last-one")
    wait_until(
        lambda: redis_client.commands()
        .xrevrange(stream, count=1)[0][1]["message"]
        .startswith(f"GET /apps/{name}/last-one 404 "),
        timeout=15,
        message="the last request's line",
    )
    length = redis_client.commands().xlen(stream)
    assert APP_LOG_LINES <= length <= APP_LOG_LINES + TRIM_SLACK, length
    # The API bounds what it returns whatever the stream holds.
    assert len(_lines(api, name, "?limit=500")) == length
