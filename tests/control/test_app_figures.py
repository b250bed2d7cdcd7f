"""Per-app figures on the real cluster: requests sent through the supervisor's proxy are counted
by the worker's web processes (both gunicorn workers add to the same minute), 5xx answers as
errors, and the live supervisor's API returns them with a plausible p50 and the app database's
size as the worker measured it."""

from __future__ import annotations

import http.client
import statistics
import time
import urllib.parse

import psycopg
import pytest

from tests.control.test_queue import Api, QueueWorkers
from tests.support import services
from tests.support.processes import wait_until

pytestmark = pytest.mark.cluster
OK_REQUESTS = 12
ERROR_REQUESTS = 4


@pytest.fixture(scope="module")
def queue_worker(cluster, tmp_path_factory):
    pool = QueueWorkers(cluster, tmp_path_factory.mktemp("figures-queue"))
    pool.start(1)
    yield pool
    pool.stop_all()


def _get(base: str, path: str, headers: dict | None = None) -> tuple[int, bool, float]:
    """(status, served by a hosted app — it names its environment —, seconds taken)."""
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    started = time.monotonic()
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("X-App-Environment") == "env_a", time.monotonic() - started
    finally:
        conn.close()


def test_requests_through_the_proxy_become_exact_counts_and_a_plausible_p50(api: Api, queue_worker, cluster_logs):
    cluster = cluster_logs
    name = "figures_app"
    page = f"/apps/{name}/admin/login/"
    status, body = api("POST", "/apps", {"name": name, "environments": ["env_a"], "start": True})
    assert status == 201, body
    api.wait_statuses(name, {"env_a": "running"}, timeout=60)
    # Until it serves; every answer the app itself gave (it names its environment) is counted.
    served = 0

    def serves() -> bool:
        nonlocal served
        status, hosted, _ = _get(cluster.url, page)
        served += hosted
        return status == 200

    wait_until(serves, timeout=10, message=f"{name} serves")

    durations = []
    for i in range(OK_REQUESTS):
        status, hosted, seconds = _get(cluster.url, f"{page}?n={i}")
        assert (status, hosted) == (200, True)
        durations.append(seconds * 1000)
    # 5xx from the app: its sessions table is gone and a session cookie makes the admin read it.
    database = f"{services.RUN_ID}_{name}"
    with psycopg.connect(host=services.PG_HOST, port=services.PG_PORT, user=services.PG_USER, dbname=database) as conn:
        conn.execute("DROP TABLE django_session")
    cookie = {"Cookie": f"app_{name}_sessionid={'a' * 32}"}
    # (Raised past the hosting middleware, so Django's outer handler answers: no environment
    # header, but the middleware counted it on the way out.)
    for _ in range(ERROR_REQUESTS):
        assert _get(cluster.url, f"/apps/{name}/admin/", cookie)[0] == 500

    expected = served + OK_REQUESTS + ERROR_REQUESTS

    def figures() -> dict | None:
        status, body = api("GET", f"/apps/{name}/figures")
        assert status == 200, body
        return body if body["environments"]["env_a"]["requests"] >= expected else None

    body = wait_until(figures, timeout=15, message="the requests counted")
    env_a = body["environments"]["env_a"]
    assert (env_a["requests"], env_a["errors"]) == (expected, ERROR_REQUESTS)
    assert env_a["error_rate"] == round(ERROR_REQUESTS / expected, 4)
    assert list(body["environments"]) == ["env_a"] and body["total"]["requests"] == expected
    # The worker's median is below what the client saw through the proxy (which adds a hop), up to
    # the histogram's resolution (linear within a bucket whose upper bound is at most 5/3 of its
    # lower one, or 10 ms wide below 10 ms).
    assert 0 < env_a["p50_ms"] <= statistics.median(durations) * 5 / 3 + 5, (env_a, durations)
    assert env_a["requests_per_minute"] == pytest.approx(expected * 60 / body["window_seconds"], rel=0.05)
    # Its database's size, as the worker measured it (after the start, then with the requests).
    with psycopg.connect(host=services.PG_HOST, port=services.PG_PORT, user=services.PG_USER, dbname=database) as conn:
        actual = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    assert 0.5 * actual <= env_a["database_bytes"] <= 2 * actual, (env_a, actual)
    assert body["total"]["database_bytes"] == env_a["database_bytes"]
