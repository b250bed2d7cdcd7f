"""ENVIRONMENT_ALLOWED_NETWORKS: a registration pointing outside it is refused at ingest (real
Redis, in-process ingest), and the proxy never connects outside it (a real loopback upstream)."""

from __future__ import annotations

import dataclasses
import logging
import time

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client import REGISTRY

from apps_registry.control import ingest, keys, redis_client
from apps_registry.models import AppStatus, Environment
from apps_registry.proxy import routing
from apps_registry.registry import actions
from supervisor_site.allowed_networks import AllowedNetworks
from supervisor_site.config import ConfigError, load
from tests.support import identity


def allow(settings, value: str) -> None:
    settings.APP_CONFIG = dataclasses.replace(
        settings.APP_CONFIG, environment_allowed_networks=AllowedNetworks.parse(value.split(","))
    )
    routing._cache.clear()


def register(env: str, url: str, proxy_url: str = "") -> None:
    data = {"env": env, "url": url, "proxy_url": proxy_url, "version": "1", "host": "h", "pid": 1}
    data.update(apps_running=[], at=time.time())
    # Signed as the environment's agent would (tests/support/identity.py): genuine, so only the
    # allow-list decides.
    redis_client.commands().xadd(keys.events_stream(), identity.signed_fields("register", data, env))


def refused_for_network() -> float:
    return REGISTRY.get_sample_value("appsup_events_refused_total", {"reason": "network"}) or 0.0


def test_entries_match_literal_addresses_by_network_and_names_only_when_listed():
    allowed = AllowedNetworks.parse(["10.0.0.0/8", "fd00::/8", "worker_a", ".workers.internal", "192.168.1.7"])
    assert allowed.allows_host("10.1.2.3") and allowed.allows_host("192.168.1.7")
    assert allowed.allows_host("[fd00::1]") and allowed.allows_host("::ffff:10.0.0.1")
    assert allowed.allows_host("WORKER_A") and allowed.allows_host("b.workers.internal")
    assert not allowed.allows_host("127.0.0.1") and not allowed.allows_host("169.254.169.254")
    assert not allowed.allows_host("worker_b") and not allowed.allows_host("workers.internal.evil.example")
    assert not allowed.allows_host("localhost")  # a name is never resolved to match a network
    assert AllowedNetworks.parse([]).allows_host("anything")
    assert allowed.url_problem("http://127.0.0.1:9") == "has a host ('127.0.0.1') outside ENVIRONMENT_ALLOWED_NETWORKS"


@pytest.mark.parametrize("value", ["10.0.0.0/33", "http://x", "a b", "-bad-"])
def test_a_bad_entry_names_the_variable(tmp_path, value):
    with pytest.raises(ConfigError) as raised:
        load({"SECRET_KEY": "k", "ENVIRONMENT_ALLOWED_NETWORKS": value}, tmp_path)
    assert str(raised.value).startswith("ENVIRONMENT_ALLOWED_NETWORKS"), raised.value


@pytest.mark.django_db(transaction=True)
def test_a_registration_outside_the_allow_list_is_refused_counted_and_logged(settings, redis_conn, caplog):
    allow(settings, "10.0.0.0/8,worker_a")
    ingest.ingest()  # the group exists and has caught up
    before = refused_for_network()
    register("env_out", "http://127.0.0.1:9")
    register("env_px", "http://10.1.2.3:15000", "http://metadata.evil.example")
    register("env_in", "http://10.1.2.3:15000", "http://worker_a")
    with caplog.at_level(logging.WARNING, logger="apps_registry.control.ingest"):
        ingest.ingest()
    assert set(Environment.objects.filter(name__in=["env_out", "env_px", "env_in"]).values_list("name", flat=True)) == {
        "env_in"
    }
    assert refused_for_network() == before + 2
    assert "refusing registration of env_out: its url has a host ('127.0.0.1')" in caplog.text
    assert "refusing registration of env_px: its proxy_url has a host ('metadata.evil.example')" in caplog.text

    # An environment already registered is not re-pointed outside the list by a later registration.
    register("env_in", "http://10.1.2.3:15000", "http://169.254.169.254")
    ingest.ingest()
    assert Environment.objects.get(name="env_in").proxy_url == "http://worker_a"


@pytest.mark.django_db
def test_the_proxy_never_connects_outside_the_allow_list(settings, recorder):
    url, seen = recorder  # a real upstream on 127.0.0.1, registered before the list was set
    env = Environment.objects.create(name="env_a", url=url, last_heartbeat=timezone.now())
    actions.create_application(name="crm", environments=[env], options={"modules": ["contacts"]})
    assert actions.record_app_status("crm", "env_a", AppStatus.RUNNING)
    seen.clear()
    allow(settings, "10.0.0.0/8")
    response = Client().get("/apps/crm/admin/", RAW_URI="/apps/crm/admin/")
    assert response.status_code != 200 or response.content != b"recorded"
    assert seen == []
    # The control: with the upstream's network listed, the same request reaches it.
    allow(settings, "127.0.0.0/8")
    response = Client().get("/apps/crm/admin/", RAW_URI="/apps/crm/admin/")
    assert response.status_code == 200 and response.content == b"recorded"
    assert len(seen) == 1
