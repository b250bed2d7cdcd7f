"""Offline environments do not show `running`: the status shown everywhere (API, admin list,
status endpoint, chooser) is derived from the observed status and the environment's liveness."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client
from django.utils import timezone

from apps_registry.control.shown_status import UNKNOWN, explain, shown_status
from apps_registry.models import AppEnvironment, AppStatus, EnvironmentStatus
from apps_registry.models import Environment as EnvironmentRow
from apps_registry.registry import actions
from tests.support import identity
from tests.support.api import ApiClient
from tests.support.users import create_user

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("observed", "environment", "shown"),
    [
        (AppStatus.RUNNING, EnvironmentStatus.ONLINE, AppStatus.RUNNING),
        (AppStatus.RUNNING, EnvironmentStatus.UNKNOWN, UNKNOWN),
        (AppStatus.RUNNING, EnvironmentStatus.OFFLINE, UNKNOWN),
        (AppStatus.STARTING, EnvironmentStatus.STOPPED, UNKNOWN),
        (AppStatus.STOPPING, EnvironmentStatus.OFFLINE, UNKNOWN),
        (AppStatus.STOPPED, EnvironmentStatus.OFFLINE, AppStatus.STOPPED),
        (AppStatus.ERROR, EnvironmentStatus.OFFLINE, AppStatus.ERROR),
        (AppStatus.QUEUED, EnvironmentStatus.OFFLINE, AppStatus.QUEUED),
    ],
)
def test_shown_status(observed, environment, shown):
    assert shown_status(observed, environment) == shown
    seen = dt.datetime(2026, 12, 1, 8, 31, tzinfo=dt.UTC)
    if shown == UNKNOWN:
        assert explain(observed, environment, seen) == (
            f"environment {environment} since 2026-12-01 08:31:00 UTC; last seen {observed}"
        )
    else:
        assert explain(observed, environment, seen) == ""


@pytest.fixture
def running_on_online_and_offline(redis_conn):
    """`shop` reported running on env_a (its lease is fresh) and on env_b (not seen for 10 min)."""
    now = timezone.now()
    online = EnvironmentRow.objects.create(
        name="env_a",
        url="http://127.0.0.1:9",
        last_heartbeat=now,
        public_key=identity.public(identity.env_key("env_a")),
    )
    offline = EnvironmentRow.objects.create(
        name="env_b", url="http://127.0.0.1:9", last_heartbeat=now - dt.timedelta(minutes=10)
    )
    identity.write_lease("env_a", now.timestamp(), client=redis_conn)
    app = actions.create_application(name="shop", environments=[online, offline])
    AppEnvironment.objects.filter(application=app).update(status=AppStatus.RUNNING, status_changed_at=now)
    return app


def test_api_shows_unknown_on_an_offline_environment_with_the_observed_status(running_on_online_and_offline):
    api = ApiClient.for_user(create_user("root", superuser=True))
    status, body = api.get("/api/v1/apps/shop")
    assert status == 200
    assert body["statuses"] == {"env_a": "running", "env_b": "unknown"}
    assert body["observed"]["env_b"]["status"] == "running"
    assert body["observed"]["env_b"]["environment_status"] == "offline"
    assert 0 <= body["observed"]["env_a"]["age_seconds"] < 60


def test_admin_list_and_status_endpoint_show_unknown_on_an_offline_environment(running_on_online_and_offline):
    app = running_on_online_and_offline
    client = Client()
    client.force_login(create_user("root", superuser=True))
    page = client.get("/admin/apps_registry/application/").content.decode()
    assert "env_a: running" in page and "env_b: unknown" in page and "env_b: running" not in page
    assert "last seen running" in page
    data = client.get(f"/admin/app-supervisor/status.json?apps={app.pk}").json()
    entry = data["apps"][str(app.pk)]["statuses"]["env_b"]
    assert (entry["status"], entry["observed"]) == ("unknown", "running")
    assert entry["detail"].startswith("environment offline since ")
