"""/metrics content and access, /readyz when Redis is down, the METRICS_ALLOWED_IPS setting,
and the app/environment names on log lines — in-process, against the real PostgreSQL and
Redis of the test run."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import json
import logging

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from apps_registry.models import AppEnvironment
from apps_registry.observability.metrics import (
    observe_command_round_trip,
    observe_hosted_request,
    observe_proxy_request,
)
from apps_registry.registry import actions
from supervisor_site import config
from supervisor_site.log_format import JsonFormatter, TextFormatter, log_context
from tests.support.processes import free_port


def _config(**changes):
    return override_settings(APP_CONFIG=dataclasses.replace(settings.APP_CONFIG, **changes))


def _loopback_allowed():
    return _config(metrics_allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))


def _samples(body: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


@pytest.mark.django_db
def test_metrics_count_environments_apps_queue_and_observations(client):
    now = timezone.now()
    hour_ago = now - dt.timedelta(hours=1)
    env_x = actions.register_environment(name="ops_x", url="http://127.0.0.1:9", at=now)
    env_y = actions.register_environment(name="ops_y", url="http://127.0.0.1:9", at=hour_ago)
    actions.register_environment(name="ops_z", url="http://127.0.0.1:9", at=hour_ago)
    actions.deregister_environment("ops_z", at=now - dt.timedelta(minutes=30))
    app = actions.create_application(name="opsapp", environments=[env_x, env_y])
    actions.record_app_status("opsapp", "ops_x", "running", at=timezone.now())
    actions.request_start(app, environments=["ops_y"])
    AppEnvironment.objects.filter(environment=env_y).update(queued_at=now - dt.timedelta(seconds=30))
    observe_proxy_request("opsapp", "ops_x", 503, 0.2)
    observe_command_round_trip("start", "ops_x", "ok", 0.003)
    observe_hosted_request("opsapp", 500, 0.04)  # as a worker's hosting middleware does

    with _loopback_allowed():
        response = client.get("/metrics")
    assert response.status_code == 200
    samples = _samples(response.content.decode())

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("appsup_environments", status="online") == 1
    assert value("appsup_environments", status="offline") == 1
    assert value("appsup_environments", status="stopped") == 1
    assert value("appsup_environment_status", environment="ops_x", status="online") == 1
    assert 3590 < value("appsup_environment_heartbeat_age_seconds", environment="ops_y") < 3700
    assert value("appsup_apps", environment="ops_x", status="running") == 1
    assert value("appsup_apps", environment="ops_y", status="queued") == 1
    assert value("appsup_apps", environment="ops_x", status="queued") == 0
    assert value("appsup_start_queue_waiting") == 1
    assert 29 < value("appsup_start_queue_oldest_wait_seconds") < 90
    assert (
        value("appsup_proxy_request_duration_seconds_count", app="opsapp", environment="ops_x", status_class="5xx") >= 1
    )
    assert value("appsup_command_round_trip_seconds_count", action="start", environment="ops_x", result="ok") >= 1
    assert value("appsup_hosted_request_duration_seconds_count", app="opsapp", status_class="5xx") >= 1


@pytest.mark.django_db
def test_metrics_need_a_token_or_an_allowed_address(client):
    response = client.get("/metrics")
    assert response.status_code == 403 and b"metrics are off" in response.content

    with _config(metrics_token="s3cret-token"):
        assert client.get("/metrics").status_code == 403
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
        assert client.get("/metrics", HTTP_AUTHORIZATION="s3cret-token").status_code == 403
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200

    with _config(metrics_allowed_networks=(ipaddress.ip_network("10.0.0.0/8"),)):
        assert client.get("/metrics").status_code == 403  # the test client is 127.0.0.1
        # X-Forwarded-For counts only from TRUSTED_PROXY_IPS; from anyone else it is ignored.
        spoofed = {"REMOTE_ADDR": "192.0.2.5", "HTTP_X_FORWARDED_FOR": "10.1.2.3"}
        assert client.get("/metrics", **spoofed).status_code == 403
        assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200


def test_metrics_allowed_ips_bad_value_is_one_clear_error(tmp_path):
    parsed = config.load({"DEBUG": "true", "METRICS_ALLOWED_IPS": "127.0.0.1, 10.0.0.0/8,::1"}, tmp_path)
    assert [str(n) for n in parsed.metrics_allowed_networks] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    with pytest.raises(config.ConfigError, match=r"METRICS_ALLOWED_IPS .*'10\.0\.0\.300'"):
        config.load({"DEBUG": "true", "METRICS_ALLOWED_IPS": "127.0.0.1,10.0.0.300"}, tmp_path)


@pytest.mark.django_db
def test_readyz_says_which_dependency_is_down(client):
    assert client.get("/readyz").json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}
    closed = f"redis://127.0.0.1:{free_port()}/0"
    with _config(supervisor_redis_url=closed, command_redis_url=closed):
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "ok"
    assert response.json()["checks"]["redis"].startswith("error: ")


def test_log_lines_carry_app_and_environment():
    record = logging.makeLogRecord({"name": "ops", "levelname": "INFO", "msg": "started %s", "args": ("x",)})
    assert "[" not in TextFormatter().format(record)
    with log_context(app="demo", environment="env_a"):
        text = TextFormatter().format(record)
        payload = json.loads(JsonFormatter().format(record))
    assert text.endswith("INFO ops [app=demo env=env_a] started x")
    assert (payload["app"], payload["environment"], payload["message"]) == ("demo", "env_a", "started x")

    from worker_agent.hosting.db_router import current_app_alias

    token = current_app_alias.set("app:crm")
    try:
        explicit = logging.makeLogRecord({"name": "ops", "msg": "hi", "environment": "env_b"})
        payload = json.loads(JsonFormatter().format(explicit))
    finally:
        current_app_alias.reset(token)
    assert (payload["app"], payload["environment"]) == ("crm", "env_b")

    # Django's request log (e.g. a 502 from the supervisor's proxy) names the app by its path.
    from django.test import RequestFactory

    request = RequestFactory().get("/apps/sales_2/admin/")
    failed = logging.makeLogRecord({"name": "django.request", "msg": "Bad Gateway", "request": request})
    assert json.loads(JsonFormatter().format(failed))["app"] == "sales_2"
    assert "[app=sales_2] Bad Gateway" in TextFormatter().format(failed)
