"""A configuration cache restored from an older Redis snapshot: it still has its marker, but its
epoch is behind the registry's, so the supervisor rebuilds it (at boot at once, periodically
when it stays behind), and an agent that already applied a newer cache does not act on it
(a real agent, restarted on the stale cache: it does not start the app operators stopped)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from apps_registry.control import keys
from apps_registry.control.discovery import RemoteDiscovery, get_discovery
from apps_registry.models import AppEnvironment, Application, ConfigEpoch
from apps_registry.registry import actions
from tests.support import services
from tests.support.cluster import _create_database, worker_environ
from tests.support.processes import PYTHON, Process, free_port, wait_until
from worker_agent.hosting import local_state

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

ENV = "env_epoch"


def _raw() -> redis.Redis:
    return redis.Redis.from_url(services.redis_url())  # DUMP/RESTORE want bytes


def _snapshot() -> dict[bytes, bytes]:
    """The configuration cache and the generations, as an RDB snapshot would keep them."""
    client = _raw()
    found = [*client.scan_iter(match=keys.cfg_app("*")), *client.scan_iter(match=f"{services.RUN_ID}:cfg:*")]
    found += list(client.scan_iter(match=keys.generations("*")))
    return {key: client.dump(key) for key in set(found)}


def _restore(snapshot: dict[bytes, bytes]) -> None:
    client = _raw()
    for key in client.scan_iter(match=f"{services.RUN_ID}:cfg:*"):
        client.delete(key)
    for key, value in snapshot.items():
        client.restore(key, 0, value, replace=True)


def _cache_epoch() -> int:
    return int(_raw().get(keys.cfg_epoch()) or 0)


def test_an_older_cache_is_rebuilt_at_boot(redis_conn):
    env = actions.register_environment(name="env_boot", url="http://127.0.0.1:9")
    get_discovery().rebuild()
    old = _snapshot()
    actions.create_application(name=f"boot_{services.RUN_ID}", environments=[env])
    assert _cache_epoch() == ConfigEpoch.current() > 0
    _restore(old)
    assert _cache_epoch() < ConfigEpoch.current()
    RemoteDiscovery().ensure_built()  # a supervisor process booting
    assert _cache_epoch() == ConfigEpoch.current()
    assert get_discovery().get_app(f"boot_{services.RUN_ID}") is not None


def test_a_restored_cache_is_rebuilt_and_the_agent_does_not_act_on_it(redis_conn, tmp_path):
    env = {**worker_environ(ENV, free_port()), "APP_STORAGE_DIR": str(tmp_path / "storage")}
    _create_database(env["DB_DATABASE"])
    state = Path(env["APP_STORAGE_DIR"]) / "runtime" / f"{ENV}.json"
    epoch_file = state.with_suffix(".epoch")

    def app_status() -> str | None:
        return (local_state.read_apps(path=state).get(name) or {}).get("status") if state.exists() else None

    environment = actions.register_environment(name=ENV, url=env["ENVIRONMENT_URL"])
    name = f"epoch_{services.RUN_ID}"
    app = actions.create_application(name=name, environments=[environment], options={"modules": ["contacts"]})
    actions.begin_environment_start(name, ENV, generation=app.generation)  # desired running, published
    agent = Process("epoch-agent", [PYTHON, "manage.py", "run_worker"], env, tmp_path)
    try:
        agent.start()
        wait_until(lambda: app_status() == "running", timeout=90, interval=0.2, message="started by reconciliation")
        stale = _snapshot()  # the app desired running

        actions.request_stop(Application.objects.get(name=name))
        wait_until(lambda: app_status() == "stopped", timeout=30, interval=0.1, message="stopped by the operator")
        wait_until(
            lambda: epoch_file.exists() and json.loads(epoch_file.read_text())["epoch"] >= ConfigEpoch.current(),
            timeout=30,
            interval=0.1,
            message="the agent applied the newer cache",
        )
        agent.kill()

        _restore(stale)  # Redis came back from the older snapshot, marker and all
        assert _cache_epoch() < ConfigEpoch.current()
        agent.start()  # restarted on the stale cache
        wait_until(lambda: "configuration cache is older" in agent.log(), timeout=30, interval=0.1, message="waits")
        assert app_status() == "stopped"

        supervisor = get_discovery()
        for _round in range(2):  # periodic checks: behind twice in a row → rebuilt
            supervisor._checked_at = float("-inf")  # as if ENSURE_INTERVAL had passed
            supervisor._first_look = False
            supervisor.ensure_built()
        assert _cache_epoch() == ConfigEpoch.current()
        wait_until(
            lambda: "configuration cache caught up" in agent.log(), timeout=30, interval=0.1, message="caught up"
        )
        deadline = time.monotonic() + 2.5  # bounded: a reconciliation (every 2 s) on the rebuilt cache
        while time.monotonic() < deadline:
            assert app_status() == "stopped"
            time.sleep(0.1)
        placement = AppEnvironment.objects.get(application__name=name, environment__name=ENV)
        assert placement.desired_running is False
        assert agent.log().count("configuration cache is older") == 1, "logged once"
    finally:
        agent.stop()


def _marker(at: str) -> str:
    return '{"apps": 1, "at": "%s", "envs": 1}' % at  # noqa: UP031 (the marker's own JSON)


def test_epoch_guard_refuses_older_caches_and_trusts_newer_rebuilds(tmp_path, caplog):
    from apps_registry.control.discovery import Stamp
    from worker_agent.agent.epoch import EpochGuard

    path = tmp_path / "runtime" / "env_x.epoch"
    first = _marker("2026-12-01T10:00:00+00:00")
    guard = EpochGuard(path)
    assert guard.accept(Stamp(7, first))
    assert guard.accept(Stamp(9, first))
    # Restarted: it remembers; the same marker with an older epoch is a restored snapshot.
    guard = EpochGuard(path)
    assert guard.highest == 9
    assert not guard.accept(Stamp(8, first))
    assert not guard.accept(Stamp(8, _marker("2026-12-01T09:00:00+00:00")))  # an even older rebuild
    assert sum("is older" in r.getMessage() for r in caplog.records) == 1  # logged once
    # A newer rebuild is the registry's word, even with a lower epoch (a second registry).
    assert guard.accept(Stamp(3, _marker("2026-12-01T11:00:00+00:00")))
    assert EpochGuard(path).highest == 3
    assert any("caught up" in r.getMessage() for r in caplog.records)
