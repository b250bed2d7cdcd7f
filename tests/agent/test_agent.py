"""The worker agent against real processes: registration, liveness, deregistration."""

import dataclasses
import signal
import time

import pytest

from apps_registry.control import ingest, liveness
from apps_registry.models import Environment
from tests.support.cluster import LEASE_INTERVAL, OFFLINE_AFTER
from tests.support.identity import lease_at
from tests.support.processes import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def short_liveness(settings):
    settings.APP_CONFIG = dataclasses.replace(
        settings.APP_CONFIG, lease_interval=LEASE_INTERVAL, offline_after=OFFLINE_AFTER
    )


def env_status(name: str) -> str:
    ingest.ingest()
    env = Environment.objects.filter(name=name).first()
    if env is None:
        return "absent"
    return liveness.environment_statuses([env])[name][0]


def test_workers_register_themselves(cluster_logs):
    def registered():
        ingest.ingest()
        return Environment.objects.filter(name__in=["env_a", "env_b"]).count() == 2

    wait_until(registered, timeout=10, message="both environments registered")
    env_a = Environment.objects.get(name="env_a")
    assert env_a.url == cluster_logs.env_a.url
    assert env_a.version and env_a.host and env_a.pid == cluster_logs.env_a.agent.pid
    assert env_a.apps_running == []


def test_killed_agent_goes_unknown_then_offline_and_back(cluster_logs, short_liveness):
    worker = cluster_logs.env_b
    wait_until(lambda: env_status("env_b") == "online", timeout=10, message="env_b online")
    worker.kill_agent()
    killed = time.monotonic()
    wait_until(lambda: env_status("env_b") == "unknown", timeout=5, message="env_b unknown")
    wait_until(lambda: env_status("env_b") == "offline", timeout=OFFLINE_AFTER + 3, message="env_b offline")
    assert time.monotonic() - killed <= OFFLINE_AFTER + 2
    worker.start_agent()
    wait_until(lambda: env_status("env_b") == "online", timeout=20, message="env_b online again")


def test_sigterm_deregisters_within_a_second(cluster_logs, short_liveness):
    worker = cluster_logs.env_a
    wait_until(lambda: env_status("env_a") == "online", timeout=10, message="env_a online")
    worker.agent.signal(signal.SIGTERM)
    sent = time.monotonic()
    wait_until(lambda: env_status("env_a") == "stopped", timeout=2, interval=0.02, message="env_a stopped")
    assert time.monotonic() - sent <= 1.0
    assert worker.agent.popen.wait(timeout=30) == 0
    assert lease_at("env_a", worker.key()) is None
    assert "deregistered environment env_a" in worker.agent.log()
