"""Environment status derived from the last lease beat: no sweeper, one Redis round trip,
and the database's heartbeat when Redis cannot tell."""

from __future__ import annotations

import datetime as dt

import pytest
import redis
from django.utils import timezone
from redis.backoff import NoBackoff
from redis.retry import Retry

from apps_registry import signing
from apps_registry.control import keys, liveness, redis_client
from apps_registry.control.liveness import classify, describe_age, environment_statuses
from apps_registry.models import Environment
from tests.support import identity
from tests.support.processes import free_port

NOW = dt.datetime(2026, 11, 28, 12, 0, 0, tzinfo=dt.UTC)
LEASE, OFFLINE = 3.0, 12.0


def ago(seconds: float) -> dt.datetime:
    return NOW - dt.timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("seen_ago", "stopped_ago", "status"),
    [
        (0, None, "online"),
        (6, None, "online"),  # exactly 2 × lease
        (6.5, None, "unknown"),
        (12, None, "unknown"),  # exactly APP_OFFLINE_AFTER
        (12.5, None, "offline"),
        (3600, None, "offline"),
        (None, None, "offline"),  # never seen
        (10, 5, "stopped"),  # deregistered after its last beat
        (None, 5, "stopped"),
        (1, 5, "online"),  # beat again after deregistering: it came back
        (-2, None, "online"),  # a clock slightly ahead is not an error
    ],
)
def test_classify(seen_ago, stopped_ago, status):
    seen = ago(seen_ago) if seen_ago is not None else None
    stopped = ago(stopped_ago) if stopped_ago is not None else None
    assert classify(seen, stopped, NOW, lease_interval=LEASE, offline_after=OFFLINE) == status


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s ago"), (40, "40 s ago"), (119, "119 s ago"), (120, "2 min ago"), (7199, "119 min ago")]
    + [(7200, "2 h ago"), (86400 * 2 - 1, "47 h ago"), (86400 * 5, "5 d ago"), (-3, "0 s ago")],
)
def test_describe_age(seconds, text):
    assert describe_age(ago(seconds), NOW) == text


def test_describe_age_never():
    assert describe_age(None) == "never"


@pytest.mark.django_db
def test_statuses_from_redis_with_one_round_trip(redis_conn, monkeypatch):
    now = timezone.now()
    old = now - dt.timedelta(hours=1)
    envs = [
        Environment.objects.create(
            name=f"env_{i:02d}",
            url="http://h:1",
            last_heartbeat=old,
            public_key=identity.public(identity.env_key(f"env_{i:02d}")),
        )
        for i in range(40)
    ]
    identity.write_lease("env_00", now.timestamp() - 1, client=redis_conn)
    identity.write_lease("env_01", now.timestamp() - 9, client=redis_conn)
    # Signed by someone else, or unsigned: not a sighting.
    identity.write_lease("env_02", now.timestamp(), key=identity.env_key("impostor"), client=redis_conn)
    redis_conn.set(
        keys.lease("env_03", signing.fingerprint(envs[3].public_key)), f'{{"at":"{now.timestamp()}","env":"env_03"}}'
    )

    client = redis_client.commands()
    calls: list[tuple] = []
    real = client.execute_command
    monkeypatch.setattr(client, "execute_command", lambda *args, **kw: calls.append(args) or real(*args, **kw))
    statuses = environment_statuses(envs, now=now)
    # One command for the whole page, and Redis's uptime at most once a second per process
    # (asked because some bound environments have no lease: did Redis lose them?).
    assert [c[0] for c in calls] in (["MGET"], ["MGET", "INFO"]), calls
    calls.clear()
    assert environment_statuses(envs, now=now) == statuses
    assert [c[0] for c in calls] == ["MGET"], "one Redis command for the whole page"

    assert statuses["env_00"][0] == "online"
    assert abs((statuses["env_00"][1] - now).total_seconds() + 1) < 0.01
    assert statuses["env_01"][0] == "unknown"
    # No genuine lease in Redis: the database heartbeat (an hour old) decides.
    assert statuses["env_02"] == ("offline", old)
    assert statuses["env_03"] == ("offline", old)
    assert statuses["env_04"] == ("offline", old)


@pytest.mark.django_db
def test_database_heartbeat_when_redis_has_no_entry(redis_conn):
    now = timezone.now()
    fresh = Environment.objects.create(name="env_a", url="http://h:1", last_heartbeat=now - dt.timedelta(seconds=2))
    never = Environment.objects.create(name="env_b", url="http://h:2")
    stopped = Environment.objects.create(
        name="env_c", url="http://h:3", last_heartbeat=now - dt.timedelta(seconds=30), stopped_at=now
    )
    statuses = environment_statuses([fresh, never, stopped], now=now)
    assert statuses == {
        "env_a": ("online", fresh.last_heartbeat),
        "env_b": ("offline", None),
        "env_c": ("stopped", stopped.last_heartbeat),
    }


@pytest.mark.django_db
def test_redis_unreachable_means_unknown_not_offline(monkeypatch):
    """Without Redis nothing new can be known: an environment whose last database heartbeat is
    minutes old is ``unknown`` (its apps keep being served), not ``offline``; one that
    deregistered stays ``stopped``."""
    # A real client pointed at a port nobody listens on.
    dead = redis.Redis(
        host="127.0.0.1",
        port=free_port(),
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )
    monkeypatch.setattr(liveness.redis_client, "commands", lambda: dead)
    now = timezone.now()
    old = now - dt.timedelta(seconds=100)
    bound = {name: identity.public(identity.env_key(name)) for name in ("env_a", "env_b")}
    quiet = Environment.objects.create(name="env_a", url="http://h:1", last_heartbeat=old, public_key=bound["env_a"])
    gone = Environment.objects.create(
        name="env_b", url="http://h:2", last_heartbeat=old, stopped_at=old, public_key=bound["env_b"]
    )
    assert environment_statuses([quiet, gone], now=now) == {"env_a": ("unknown", old), "env_b": ("stopped", old)}


@pytest.mark.django_db
def test_the_fresher_of_redis_and_database_wins(redis_conn):
    now = timezone.now()
    env = Environment.objects.create(name="env_a", url="http://h:1", last_heartbeat=now - dt.timedelta(seconds=1))
    identity.bind("env_a")
    env.refresh_from_db()
    identity.write_lease("env_a", now.timestamp() - 60, client=redis_conn)
    status, seen = environment_statuses([env], now=now)["env_a"]
    assert status == "online" and seen == env.last_heartbeat


def test_no_environments_no_round_trip():
    assert environment_statuses([]) == {}


def test_proxy_prefers_online_environments_and_falls_back_to_unknown_ones():
    from apps_registry.proxy.routing import AppRoute, Placement

    def placement(env: str, status: str) -> Placement:
        return Placement(
            environment=env,
            target_url=f"http://{env}",
            url=f"http://{env}",
            enabled=True,
            env_status=status,
            last_seen=None,
            app_status="running",
        )

    route = AppRoute(pk=1, name="crm", display_name="CRM", options={})
    mixed = AppRoute(**{**route.__dict__, "placements": (placement("env_a", "unknown"), placement("env_b", "online"))})
    assert [p.environment for p in mixed.choosable()] == ["env_b"]
    blind = AppRoute(**{**route.__dict__, "placements": (placement("env_a", "unknown"), placement("env_b", "offline"))})
    assert [p.environment for p in blind.choosable()] == ["env_a"]
