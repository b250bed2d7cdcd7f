"""Per-app figures through real Redis, without a cluster: what a worker's writer adds
(``worker_agent.hosting.app_figures.Writer``, driven directly) is what the supervisor reads
(``apps_registry.control.app_figures``), the API returns and the app page shows; forged hashes
are refused and logged, never counted. The cluster test (test_app_figures.py) sends real requests."""

from __future__ import annotations

import dataclasses
import logging
import time

import pytest
from django.test import Client

from apps_registry.control import app_figures, keys, protocol
from apps_registry.models import ApiToken, Environment
from apps_registry.registry import actions
from tests.support.api import ApiClient
from tests.support.users import create_user
from worker_agent.hosting import app_databases
from worker_agent.hosting import app_figures as worker_figures

pytestmark = pytest.mark.django_db
TEMPLATE = "/apps/{name}/figures"


@pytest.fixture
def app(redis_conn):
    envs = [
        Environment.objects.create(name="env_a", url="http://127.0.0.1:15000"),
        Environment.objects.create(name="env_b", url="http://127.0.0.1:16000"),
    ]
    return actions.create_application(name="shop", environments=envs, options={"modules": ["contacts"]})


@pytest.fixture
def as_worker(settings):
    """Switch this process to a worker of ``env`` (the writer files under its environment)."""
    real = settings.APP_CONFIG

    def switch(env: str) -> None:
        settings.APP_CONFIG = dataclasses.replace(real, mode="worker", environment_name=env)

    yield switch
    settings.APP_CONFIG = real


def requests(*durations_ms: float, errors: int = 0, app: str = "shop", db=None) -> list[tuple]:
    """A writer's batch: one request per duration, the first ``errors`` of them 5xx."""
    now = time.time()
    return [("request", app, i < errors, protocol.latency_bucket(ms), now, db) for i, ms in enumerate(durations_ms)]


def sqlite_db(tmp_path, size: int) -> app_databases.AppDatabase:
    path = tmp_path / "shop.sqlite3"
    path.write_bytes(b"x" * size)
    return app_databases.AppDatabase("shop", "app_shop", "sqlite", {"NAME": str(path)})


def test_counts_are_exact_p50_within_its_bucket_and_total_merges(app, as_worker, tmp_path):
    as_worker("env_a")
    writer = worker_figures.Writer()
    # 10 requests on env_a: 6 fast (4 ms), 4 slow (120 ms), 2 of the slow ones erroring.
    writer.write(requests(120, 120, 4, 4, 4, 4, 4, 4, 120, 120, errors=2, db=sqlite_db(tmp_path, 4096)))
    as_worker("env_b")
    worker_figures.Writer().write(requests(40, 40))  # another process, another environment

    figures = app_figures.read("shop", ["env_a", "env_b"])
    env_a, env_b, total = figures.environments["env_a"], figures.environments["env_b"], figures.total
    assert (env_a.requests, env_a.errors, env_a.error_rate) == (10, 2, 0.2)
    assert 3 < env_a.p50_ms <= 5  # the bucket (3, 5] holds the median
    assert (env_b.requests, env_b.errors, env_b.error_rate) == (2, 0, 0.0)
    assert 30 < env_b.p50_ms <= 50
    assert (total.requests, total.errors) == (12, 2)
    assert 3 < total.p50_ms <= 5
    # The database size, measured by the worker that saw the requests, is the app's in total.
    assert (env_a.database_bytes, total.database_bytes, env_b.database_bytes) == (4096, 4096, None)
    as_json = figures.as_json()
    assert 4 * 60 <= as_json["window_seconds"] <= 5 * 60
    assert as_json["total"]["requests_per_minute"] == pytest.approx(12 / figures.window_minutes, abs=0.01)


def test_a_second_batch_adds_and_the_size_is_measured_at_most_once_a_minute(app, as_worker, tmp_path):
    as_worker("env_a")
    writer = worker_figures.Writer()
    db = sqlite_db(tmp_path, 1000)
    writer.write(requests(4, db=db))
    (tmp_path / "shop.sqlite3").write_bytes(b"x" * 2000)
    writer.write(requests(4, 4, db=db))
    env_a = app_figures.read("shop", ["env_a"]).environments["env_a"]
    assert (env_a.requests, env_a.database_bytes) == (3, 1000)  # not measured again within the minute
    writer.write([("database", "shop", False, 0, time.time(), db)])  # after a start: measured at once
    assert app_figures.read("shop", ["env_a"]).environments["env_a"].database_bytes == 2000


def test_forged_hashes_are_refused_and_logged_never_counted(app, as_worker, redis_conn, caplog):
    caplog.set_level(logging.WARNING, logger="apps_registry.control.app_figures")
    as_worker("env_a")
    worker_figures.Writer().write(requests(4, 4))
    seconds, _ = redis_conn.time()
    minute = seconds // 60
    forged = {
        minute - 1: {"requests": "5", "b0": "5", "evil": "1"},  # unknown field
        minute - 2: {"requests": "-5", "b0": "-5"},  # negative
        minute - 3: {"requests": "9" * 30, "b0": "9" * 30},  # absurd
        minute - 4: {"requests": "5", "errors": "6", "b0": "5"},  # more errors than requests
    }
    for m, fields in forged.items():
        redis_conn.hset(keys.app_figures("shop", m, "env_a"), mapping=fields)
    redis_conn.hset(keys.app_figures("shop", minute, "env_b"), mapping={"requests": "3", "b0": "1"})  # buckets short
    redis_conn.hset(keys.app_database_size("shop", "env_b"), mapping={"bytes": "1e9", "at": "1"})
    figures = app_figures.read("shop", ["env_a", "env_b"])
    assert figures.environments["env_a"].requests == 2
    assert (figures.environments["env_b"].requests, figures.environments["env_b"].database_bytes) == (0, None)
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 6, refusals


def test_the_api_returns_the_figures_per_environment_and_in_total(app, as_worker, tmp_path, settings):
    as_worker("env_a")
    worker_figures.Writer().write(requests(4, 4, 120, errors=1, db=sqlite_db(tmp_path, 4096)))
    settings.APP_CONFIG = dataclasses.replace(settings.APP_CONFIG, mode="supervisor")
    document = Client().get("/api/v1/openapi.json").json()
    _token, raw = ApiToken.issue(create_user("figroot", superuser=True))
    api = ApiClient(raw, document=document)
    status, body = api.call("GET", "/api/v1/apps/shop/figures", TEMPLATE)
    assert status == 200, body
    assert body["environments"]["env_a"]["requests"] == 3 and body["environments"]["env_a"]["errors"] == 1
    assert body["environments"]["env_a"]["error_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert body["environments"]["env_b"] == {
        "requests": 0,
        "errors": 0,
        "requests_per_minute": 0.0,
        "p50_ms": None,
        "error_rate": None,
        "database_bytes": None,
        "database_measured_at": None,
    }
    assert body["total"]["database_bytes"] == 4096
    status, body = api.call("GET", "/api/v1/apps/nope/figures", TEMPLATE)
    assert status == 404
    status, body = api.call("GET", "/api/v1/apps/Bad%20Name/figures", TEMPLATE)
    assert status in (400, 404)


def test_the_app_page_shows_a_figures_block(admin_client, app, as_worker, tmp_path, settings):
    as_worker("env_a")
    worker_figures.Writer().write(requests(4, 4, 120, errors=1, db=sqlite_db(tmp_path, 4096)))
    settings.APP_CONFIG = dataclasses.replace(settings.APP_CONFIG, mode="supervisor")
    html = admin_client.get(f"/admin/apps_registry/application/{app.pk}/change/").content.decode()
    assert "<h2>Figures</h2>" in html
    assert '<th scope="row">env_a</th><td>3</td>' in html
    assert "33.3 % (1)" in html and "4.0\xa0KB" in html
    assert "All environments" in html
    # The add page has no figures.
    assert "<h2>Figures</h2>" not in admin_client.get("/admin/apps_registry/application/add/").content.decode()
