"""Both discovery adapters through one suite, then what only the Redis cache does:
write-through after commit, rebuild after FLUSHDB, readers refusing a cache not built."""

from __future__ import annotations

import json
import threading
import time

import pytest
from django.core.management import call_command
from django.db import transaction

from apps_registry import backends
from apps_registry.control import discovery, redis_client, specs
from apps_registry.control.discovery import CacheNotReady, LocalDiscovery, RemoteDiscovery
from apps_registry.models import AppEnvironment, Application, Environment
from apps_registry.registry import actions

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["local", "remote"])
def adapter(request, db, redis_conn):
    if request.param == "local":
        return LocalDiscovery()
    remote = RemoteDiscovery()
    remote.rebuild()  # an empty registry is a built (empty) cache
    return remote


@pytest.fixture
def envs(django_capture_on_commit_callbacks) -> list[Environment]:
    with django_capture_on_commit_callbacks(execute=True):
        return [
            actions.register_environment(name=name, url=f"http://127.0.0.1:{port}", version="1.2")
            for name, port in (("env_a", 15000), ("env_b", 16000))
        ]


def create(name: str, environments: list[Environment], **options) -> Application:
    return actions.create_application(
        name=name, environments=environments, display_name=name.upper(), options=options or None
    )


# --- One suite, both adapters ------------------------------------------------------------------


def test_get_app_returns_the_spec(adapter, envs, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        app = create("sales_eu", envs, modules=["contacts"], start_mode="on_first_visit")
    spec = adapter.get_app("sales_eu")
    assert spec == {
        "name": "sales_eu",
        "display_name": "SALES_EU",
        "domain": None,
        "options": {"modules": ["contacts"], "start_mode": "on_first_visit"},
        "generation": 0,
        "incarnation": str(app.incarnation),
        "environments": {"env_a": {"desired_running": False}, "env_b": {"desired_running": False}},
    }
    assert adapter.get_app("nope") is None


def test_apps_for_environment(adapter, envs, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        create("both", envs)
        create("only_a", envs[:1])
        create("only_b", envs[1:])
    assert [s["name"] for s in adapter.apps_for_environment("env_a")] == ["both", "only_a"]
    assert [s["name"] for s in adapter.apps_for_environment("env_b")] == ["both", "only_b"]
    assert adapter.apps_for_environment("env_z") == []


def test_environments(adapter, envs, django_capture_on_commit_callbacks):
    assert adapter.get_environment("env_a") == {
        "name": "env_a",
        "url": "http://127.0.0.1:15000",
        "proxy_url": "",
        "enabled": True,
    }
    assert [e["name"] for e in adapter.list_environments()] == ["env_a", "env_b"]
    with django_capture_on_commit_callbacks(execute=True):
        actions.set_environment_enabled(envs[1], False)
    assert adapter.get_environment("env_b")["enabled"] is False
    with django_capture_on_commit_callbacks(execute=True):
        actions.forget_environment(envs[0])
    assert adapter.get_environment("env_a") is None
    assert [e["name"] for e in adapter.list_environments()] == ["env_b"]


def test_changes_are_seen(adapter, envs, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        app = create("ops", envs[:1], modules=["tasks"])
    with django_capture_on_commit_callbacks(execute=True):
        app.display_name = "Operations"
        app.options = {**app.options, "modules": ["tasks", "contacts"]}
        actions.update_application(app)
        actions.set_application_environments(app, envs)
    spec = adapter.get_app("ops")
    assert spec["display_name"] == "Operations"
    assert spec["options"]["modules"] == ["tasks", "contacts"]
    assert sorted(spec["environments"]) == ["env_a", "env_b"]
    with django_capture_on_commit_callbacks(execute=True):
        actions.delete_application(app)
    assert adapter.get_app("ops") is None
    assert adapter.apps_for_environment("env_a") == []


def test_both_adapters_agree(envs, redis_conn, django_capture_on_commit_callbacks):
    remote = RemoteDiscovery()
    remote.rebuild()
    with django_capture_on_commit_callbacks(execute=True):
        for i in range(5):
            create(f"app_{i}", envs[: 1 + i % 2], modules=["contacts"])
        actions.set_environment_enabled(envs[0], False)
    local = LocalDiscovery()
    for env in ("env_a", "env_b"):
        assert remote.apps_for_environment(env) == local.apps_for_environment(env)
    assert remote.list_environments() == local.list_environments()


# --- The Redis cache: write-through, rebuild, not-ready ---------------------------------------------


def cached(client, *parts: str):
    raw = client.get(redis_client.key("cfg", *parts))
    return json.loads(raw) if raw else None


def test_write_through_happens_only_after_commit(envs, redis_conn, django_capture_on_commit_callbacks):
    RemoteDiscovery().rebuild()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        create("late", envs)
        assert cached(redis_conn, "app", "late") is None, "published before the commit"
    assert callbacks, "the change was deferred to on_commit"
    assert cached(redis_conn, "app", "late")["name"] == "late"
    assert redis_conn.sismember(redis_client.key("cfg", "apps"), "late")


def test_rolled_back_change_is_never_published(envs, redis_conn, django_capture_on_commit_callbacks):
    RemoteDiscovery().rebuild()
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError), transaction.atomic():
        create("ghost", envs)
        raise RuntimeError("operator's request failed")
    assert cached(redis_conn, "app", "ghost") is None
    assert not Application.objects.filter(name="ghost").exists()


@pytest.mark.django_db(transaction=True)
def test_write_through_in_real_transactions(redis_conn):
    RemoteDiscovery().rebuild()
    env = actions.register_environment(name="env_t", url="http://127.0.0.1:15000")
    with transaction.atomic():
        app = create("txn", [env])
        assert cached(redis_conn, "app", "txn") is None
    assert cached(redis_conn, "app", "txn")["environments"] == {"env_t": {"desired_running": False}}
    assert cached(redis_conn, "env", "env_t")["url"] == "http://127.0.0.1:15000"
    actions.delete_application(app)
    assert cached(redis_conn, "app", "txn") is None


def test_rebuild_after_flushdb(envs, redis_conn, django_capture_on_commit_callbacks):
    remote = RemoteDiscovery()
    with django_capture_on_commit_callbacks(execute=True):
        create("keep_me", envs)
    remote.rebuild()
    redis_conn.flushdb()  # our own test database: Redis restarted empty
    with pytest.raises(CacheNotReady):
        remote.get_app("keep_me")
    with pytest.raises(CacheNotReady):
        remote.apps_for_environment("env_a")
    remote.ensure_built(force=True)
    assert remote.get_app("keep_me")["environments"].keys() == {"env_a", "env_b"}
    assert [e["name"] for e in remote.list_environments()] == ["env_a", "env_b"]


def test_rebuild_removes_what_the_database_no_longer_has(envs, redis_conn):
    remote = RemoteDiscovery()
    remote.rebuild()
    # Left behind by a lost write: the database is the truth.
    redis_conn.set(redis_client.key("cfg", "app", "zombie"), json.dumps({"name": "zombie"}))
    redis_conn.sadd(redis_client.key("cfg", "apps"), "zombie")
    Application.objects.create(name="real")
    remote.rebuild()
    assert remote.get_app("zombie") is None
    assert redis_conn.smembers(redis_client.key("cfg", "apps")) == {"real"}


def test_write_to_an_emptied_cache_rebuilds_it(envs, redis_conn, django_capture_on_commit_callbacks):
    remote = RemoteDiscovery()
    with django_capture_on_commit_callbacks(execute=True):
        create("first", envs)
    redis_conn.flushdb()
    with django_capture_on_commit_callbacks(execute=True):
        create("second", envs)
    assert {s["name"] for s in remote.apps_for_environment("env_a")} == {"first", "second"}


def test_ensure_built_is_throttled(envs, redis_conn):
    remote = RemoteDiscovery()
    remote.ensure_built(force=True)
    redis_conn.delete(redis_client.key("cfg", "built"))
    remote.ensure_built()  # within the interval: no check, still missing
    assert not remote.is_built()
    remote.ensure_built(force=True)
    assert remote.is_built()


def test_readers_never_see_a_half_cache(redis_conn):
    """While rebuilds run, a reader sees either not-ready or all 200 apps, never some."""
    env = Environment.objects.create(name="env_a", url="http://127.0.0.1:15000")
    Application.objects.bulk_create(Application(name=f"app_{i:03d}") for i in range(200))
    AppEnvironment.objects.bulk_create(
        AppEnvironment(application=a, environment=env) for a in Application.objects.all()
    )
    remote = RemoteDiscovery()
    remote.rebuild()
    counts: set[int] = set()
    stop = threading.Event()

    def read() -> None:
        reader = RemoteDiscovery()
        # Keeps reading after the rebuilds until it has seen the complete cache once.
        deadline = time.monotonic() + 30
        while (not stop.is_set() or 200 not in counts) and time.monotonic() < deadline:
            try:
                counts.add(len(reader.apps_for_environment("env_a")))
            except CacheNotReady:
                counts.add(-1)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        for _ in range(10):
            redis_conn.delete(*redis_conn.keys(redis_client.key("cfg", "*")))
            remote.rebuild()
    finally:
        stop.set()
        thread.join(timeout=10)
    assert counts <= {-1, 200} and 200 in counts


def test_management_command(envs, redis_conn, capsys):
    Application.objects.create(name="cmd_app")
    call_command("sync_registry_cache")
    assert '"apps": 1' in capsys.readouterr().out
    assert cached(redis_conn, "app", "cmd_app")["name"] == "cmd_app"
    call_command("sync_registry_cache", "--if-missing")
    assert "left as is" in capsys.readouterr().out
    redis_conn.flushdb()
    call_command("sync_registry_cache", "--if-missing")
    assert "rebuilt" in capsys.readouterr().out
    assert cached(redis_conn, "app", "cmd_app")["name"] == "cmd_app"


def test_middleware_rebuilds_a_missing_cache(envs, redis_conn, client):
    backends._instance.cache_clear()  # a fresh adapter: its check is not throttled by earlier tests
    Application.objects.create(name="mw_app")
    redis_conn.flushdb()
    client.get("/healthz")
    assert cached(redis_conn, "app", "mw_app")["name"] == "mw_app"


def test_get_discovery_follows_the_configuration(settings):
    assert isinstance(discovery.get_discovery(), RemoteDiscovery)  # tests run as the supervisor
    assert specs.dumps({"b": 1, "a": [1]}) == '{"a":[1],"b":1}'


def test_failed_write_does_not_fail_the_change_and_is_repaired(envs, redis_conn, django_capture_on_commit_callbacks):
    """Redis unreachable at publish time: the saved change stands, and the next
    ensure_built() (any request) rebuilds the cache once Redis answers."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from tests.support.processes import free_port

    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    current = {"client": dead}
    remote = RemoteDiscovery(client=lambda: current["client"])
    current["client"] = redis_client.get()
    remote.rebuild()
    current["client"] = dead
    with django_capture_on_commit_callbacks(execute=False):
        app = create("offline_edit", envs[:1])
    remote.publish_app_by_pk(app.pk)  # what dispatch does after the commit: no exception
    remote.unpublish_environment("env_b")
    assert Application.objects.filter(name="offline_edit").exists()
    current["client"] = redis_client.get()
    assert remote.get_app("offline_edit") is None  # the cache missed it (the marker is still there)
    remote.ensure_built(force=True)
    assert remote.get_app("offline_edit")["name"] == "offline_edit"
    assert remote.get_environment("env_b")["name"] == "env_b"  # the database still has it


def test_middleware_builds_the_cache_when_the_process_starts(envs, redis_conn):
    backends._instance.cache_clear()  # a freshly booted process
    Application.objects.create(name="boot_app")
    redis_conn.flushdb()
    discovery.EnsureConfigCacheMiddleware(lambda request: None)  # what WSGIHandler() does at boot
    assert cached(redis_conn, "app", "boot_app")["name"] == "boot_app"
