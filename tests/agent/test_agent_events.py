"""Supervisor-side ingest of worker events (in-process, real Redis and PostgreSQL)."""

import datetime as dt
import json
import threading
import time
from collections.abc import Callable

import psycopg
import pytest
from django.db import connection
from django.db import connections as db_connections
from django.test.utils import CaptureQueriesContext
from prometheus_client import REGISTRY

from apps_registry.control import ingest, keys, protocol, redis_client
from apps_registry.models import AppEnvironment, AuditEntry, Environment
from apps_registry.registry import actions
from tests.support import identity
from tests.support.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def emit(event_type: str, **payload) -> str:
    """Any event, well-formed or not, as a worker would append it: signed with the key of the
    environment it names (tests/support/identity.py), timed now unless it says otherwise."""
    payload.setdefault("at", time.time())
    fields = identity.signed_fields(event_type, payload, str(payload.get("env", "")))
    return redis_client.commands().xadd(keys.events_stream(), fields)


def ingest_newer_first(redis_conn, monkeypatch, older: Callable[[], str], newer: Callable[[], str]) -> None:
    """Two ingesters: one takes the older event and stalls; the other ingests the newer one;
    the older is then taken over (XAUTOCLAIM of a stalled consumer's entries) and applied last."""
    ingest.ingest()  # the group exists and has caught up
    older()
    group = ingest._group()
    redis_conn.xreadgroup(group, "stalled-ingester", {keys.events_stream(): ">"}, count=1000)
    newer()
    ingest.ingest()
    with monkeypatch.context() as patch:  # the stalled consumer's entry is idle long enough now
        patch.setattr(ingest, "CLAIM_IDLE_MS", 0)
        patch.setattr(ingest, "_last_claim", float("-inf"))
        ingest.ingest()


def round_trips(action: str, result: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "appsup_command_round_trip_seconds_count", {"action": action, "environment": "env_x", "result": result}
        )
        or 0.0
    )


def test_registration_statuses_acks_and_bad_events(redis_conn, monkeypatch):
    now = time.time()
    emit(
        "register", env="env_x", url="http://127.0.0.1:9", version="1.2", host="h", pid=42, apps_running=["crm"], at=now
    )
    redis_conn.xadd(keys.events_stream(), {"type": "status", "data": "{not json"})
    emit("teleport", env="env_x")
    emit("status", app="../x", env="env_x", status="running", at=now)
    assert ingest.ingest() >= 4  # plus any beats of the shared test cluster's workers
    env = Environment.objects.get(name="env_x")
    assert (env.url, env.version, env.pid, env.apps_running) == ("http://127.0.0.1:9", "1.2", 42, ["crm"])

    app = actions.create_application(name="crm", environments=[env])
    before = round_trips("stop", "ok")
    request_id = actions.request_stop(app)
    # The worker's clock lags 30 s behind the supervisor's: its reports still count, because
    # events are ordered by when Redis appended them (one clock for every worker).
    emit("status", app="crm", env="env_x", status="stopping", at=time.time() - 30)
    emit("status", app="crm", env="env_x", status="stopped", at=time.time() - 30)
    sent = time.time()
    emit(
        "ack",
        id="c1",
        env="env_x",
        result="ok",
        request_id=request_id,
        app="crm",
        action="stop",
        issued_at=sent - 0.004,
        at=sent,
    )
    ingest.ingest()
    assert AppEnvironment.objects.get(application=app).status == "stopped"
    assert AuditEntry.objects.get(request_id=request_id).result == "ok"
    assert round_trips("stop", "ok") == before + 1

    # A request on two environments is ok only once both acknowledged ok.
    env_y = actions.register_environment(name="env_y", url="http://127.0.0.1:9")
    both = actions.create_application(name="crm_two", environments=[env, env_y])
    two = actions.request_stop(both)
    emit("ack", id="c3", env="env_x", result="ok", request_id=two, app="crm_two", action="stop")
    ingest.ingest()
    assert AuditEntry.objects.get(request_id=two).result == "pending"
    emit("ack", id="c4", env="env_y", result="ok", request_id=two, app="crm_two", action="stop")
    ingest.ingest()
    assert AuditEntry.objects.get(request_id=two).result == "ok"

    failed = actions.request_stop(app)
    emit("ack", id="c2", env="env_x", result="expired", request_id=failed, app="crm", action="stop")
    ingest.ingest()
    entry = AuditEntry.objects.get(request_id=failed)
    assert entry.result == "error" and "expired" in entry.error

    # Several ingesters may apply one stream's events out of order: a newer report applied
    # first is not undone by an older one.
    stream = keys.events_stream()
    ingest_newer_first(
        redis_conn,
        monkeypatch,
        older=lambda: emit("status", app="crm", env="env_x", status="running", at=time.time()),
        newer=lambda: emit("status", app="crm", env="env_x", status="stopped", at=time.time()),
    )
    assert AppEnvironment.objects.get(application=app).status == "stopped"
    # Likewise a beat applied after a later deregistration does not bring the environment back.
    ingest_newer_first(
        redis_conn,
        monkeypatch,
        older=lambda: emit("heartbeat", env="env_x", url="http://127.0.0.1:9", at=time.time()),
        newer=lambda: emit("deregister", env="env_x", at=time.time()),
    )
    assert Environment.objects.get(name="env_x").stopped_at is not None
    ingest.ingest()
    assert Environment.objects.get(name="env_x").stopped_at is not None
    pending = redis_conn.xpending(stream, protocol.SUPERVISOR_GROUP)
    assert pending["pending"] == 0


def take(redis_conn, ids: list[str]) -> list[tuple[str, dict]]:
    """Our own entries (not the shared cluster's), removed from the stream so no other ingest
    applies them again."""
    stream = keys.events_stream()
    wanted = set(ids)
    entries = [(i, f) for i, f in redis_conn.xrange(stream, ids[0], ids[-1]) if i in wanted]
    redis_conn.xdel(stream, *ids)
    return entries


def updates_of(context: CaptureQueriesContext, table: str) -> int:
    return sum(1 for q in context.captured_queries if q["sql"].startswith(f'UPDATE "{table}"'))


def test_heartbeats_are_coalesced_per_environment(redis_conn):
    names = [f"hb_{i:02d}" for i in range(50)]
    for name in names:  # registered as their agents' first registration would: bound to their keys
        public_key = identity.public(identity.env_key(name))
        actions.register_environment(name=name, url="http://127.0.0.1:9", version="v0", pid=1, public_key=public_key)

    def beats(version: str) -> list[tuple[str, dict]]:
        return take(
            redis_conn,
            [
                emit("heartbeat", env=name, url="http://127.0.0.1:9", version=f"{version}{r}", pid=1, at=time.time())
                for r in range(10)
                for name in names
            ],
        )

    # 500 beats, the description changing each round: one refresh per environment, the newest.
    entries = beats("v")
    last = {}
    for entry_id, fields in entries:
        last[json.loads(fields["data"])["env"]] = ingest._entry_time(entry_id, 0.0)
    with CaptureQueriesContext(connection) as context:
        ingest.apply_entries(entries)
    assert updates_of(context, "apps_registry_environment") == 50
    found = {e.name: e for e in Environment.objects.filter(name__in=names)}
    assert {e.version for e in found.values()} == {"v9"}
    assert all(found[name].last_heartbeat == last[name] for name in names)

    # 500 beats that only say "alive", 5 s later: one UPDATE for all 50 environments.
    entries = [(i, f) for i, f in beats("v") if json.loads(f["data"])["version"] == "v9"]
    assert len(entries) == 50
    with CaptureQueriesContext(connection) as context:
        ingest.apply_entries(entries, offset=5.0)
    assert updates_of(context, "apps_registry_environment") == 1
    # The keys' read (identity; remembered for 2 s, so often none), begin, savepoint, read, update,
    # release, commit.
    assert len(context.captured_queries) <= 7
    found = {e.name: e for e in Environment.objects.filter(name__in=names)}
    assert all((found[n].last_heartbeat - last[n]).total_seconds() >= 5.0 for n in names)
    # Less than a second newer, or older (another ingester was ahead): nothing written.
    for offset in (5.5, 0.0):
        with CaptureQueriesContext(connection) as context:
            ingest.apply_entries(entries, offset=offset)
        assert updates_of(context, "apps_registry_environment") == 0
    assert Environment.objects.get(name="hb_00").last_heartbeat == found["hb_00"].last_heartbeat

    # A deregistration in the same batch keeps its order against the beats around it.
    first = take(
        redis_conn,
        [emit("heartbeat", env="hb_01", url="http://x", version="v9", pid=1), emit("deregister", env="hb_01")],
    )
    ingest.apply_entries(first, offset=10.0)
    assert Environment.objects.get(name="hb_01").stopped_at == ingest._entry_time(first[1][0], 10.0)
    back = take(redis_conn, [emit("deregister", env="hb_02"), emit("register", env="hb_02", url="http://x", pid=2)])
    ingest.apply_entries(back, offset=10.0)
    env = Environment.objects.get(name="hb_02")
    assert env.stopped_at is None and env.pid == 2


def test_statuses_are_coalesced_and_every_ack_counts(redis_conn):
    env_p = actions.register_environment(name="env_p", url="http://127.0.0.1:9")
    env_q = actions.register_environment(name="env_q", url="http://127.0.0.1:9")
    app = actions.create_application(name="coal", environments=[env_p, env_q])
    requests = [actions.request_stop(app) for _ in range(3)]
    ids = []
    for r in range(10):
        for env in ("env_p", "env_q"):
            ids.append(emit("status", app="coal", env=env, status="running" if r % 2 else "stopping"))
    ids.append(emit("status", app="coal", env="env_q", status="error", error="boom"))
    for n, request_id in enumerate(requests):
        ids.append(emit("ack", id=f"k{n}", env="env_p", result="error", error=f"e{n}", request_id=request_id))
    with CaptureQueriesContext(connection) as context:
        ingest.apply_entries(take(redis_conn, ids))
    assert updates_of(context, "apps_registry_appenvironment") == 1
    statuses = dict(AppEnvironment.objects.filter(application=app).values_list("environment__name", "status"))
    assert statuses == {"env_p": "running", "env_q": "error"}
    assert AppEnvironment.objects.get(application=app, environment=env_q).error == "boom"
    for n, request_id in enumerate(requests):
        entry = AuditEntry.objects.get(request_id=request_id)
        # env_p failed; env_q has not answered yet: the request is not over.
        assert (entry.result, entry.outcomes, entry.error) == ("pending", {"env_p": "error"}, f"env_p: e{n}")
    acks = [emit("ack", id=f"q{n}", env="env_q", result="ok", request_id=rid) for n, rid in enumerate(requests)]
    ingest.apply_entries(take(redis_conn, acks))
    for request_id in requests:
        entry = AuditEntry.objects.get(request_id=request_id)
        assert (entry.result, entry.outcomes) == ("error", {"env_p": "error", "env_q": "ok"})
    # An older report applied late (another ingester) does not move a status back.
    stale = take(redis_conn, [emit("status", app="coal", env="env_p", status="stopped")])
    ingest.apply_entries(stale, offset=-60.0)
    assert AppEnvironment.objects.get(application=app, environment=env_p).status == "running"


def test_an_older_report_waiting_on_a_newer_ones_row_lock_does_not_overwrite_it():
    """Two ingesters: one holds the placement's row with a newer status (not yet committed);
    the other's older report waits for the lock and, once it gets it, must see the newer row."""
    env = actions.register_environment(name="env_r", url="http://127.0.0.1:9")
    app = actions.create_application(name="race", environments=[env])
    placement = AppEnvironment.objects.get(application=app)
    newer = placement.status_changed_at + dt.timedelta(seconds=10)
    older = placement.status_changed_at + dt.timedelta(seconds=5)
    settings = connection.settings_dict
    holder = psycopg.connect(
        host=settings["HOST"], port=settings["PORT"], user=settings["USER"], dbname=settings["NAME"]
    )
    try:
        holder.execute(
            "UPDATE apps_registry_appenvironment SET status = 'running', status_changed_at = %s WHERE id = %s",
            (newer, placement.pk),
        )
        result = {}

        def older_report() -> None:
            try:
                result["applied"] = actions.record_app_status("race", "env_r", "starting", at=older)
            finally:
                db_connections.close_all()

        thread = threading.Thread(target=older_report)
        thread.start()
        # Watched from a third connection: pg_stat_activity is a snapshot per transaction.
        with psycopg.connect(
            host=settings["HOST"],
            port=settings["PORT"],
            user=settings["USER"],
            dbname=settings["NAME"],
            autocommit=True,
        ) as watcher:
            wait_until(
                lambda: watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
                    (settings["NAME"],),
                ).fetchone()[0],
                timeout=10,
                interval=0.02,
                message="the older report waits for the row lock",
            )
        holder.commit()
        thread.join(timeout=10)
    finally:
        holder.close()
    assert result == {"applied": False}
    placement.refresh_from_db()
    assert (placement.status, placement.status_changed_at) == ("running", newer)


def test_status_reports_of_a_deleted_incarnation_are_ignored(redis_conn, caplog):
    env = actions.register_environment(name="env_inc", url="http://127.0.0.1:9")
    old = actions.create_application(name="again", environments=[env])
    old_incarnation = str(old.incarnation)
    actions.delete_application(old)
    new = actions.create_application(name="again", environments=[env])
    assert str(new.incarnation) != old_incarnation
    placement = AppEnvironment.objects.get(application=new, environment=env)
    # In one batch: the new app's report, then a later one of the deleted app (its remove).
    ids = [
        emit("status", app="again", env="env_inc", status="running", incarnation=str(new.incarnation)),
        emit("status", app="again", env="env_inc", status="stopped", incarnation=old_incarnation),
    ]
    with caplog.at_level("INFO", logger="apps_registry.control.ingest"):
        ingest.apply_entries(take(redis_conn, ids))
    placement.refresh_from_db()
    assert placement.status == "running"
    assert f"from a deleted incarnation {old_incarnation}" in caplog.text
    # A report without an incarnation (an agent of before) still counts.
    ingest.apply_entries(take(redis_conn, [emit("status", app="again", env="env_inc", status="stopping")]))
    placement.refresh_from_db()
    assert placement.status == "stopping"
