"""Supervisor-side ingest of worker events (in-process, real Redis and PostgreSQL)."""

import time

import pytest
from prometheus_client import REGISTRY

from apps_registry import actions, command_channel, events, redis_client
from apps_registry.models import AppEnvironment, AuditEntry, Environment

pytestmark = pytest.mark.django_db(transaction=True)


def emit(event_type: str, **payload) -> str:
    return redis_client.commands().xadd(
        command_channel.events_stream(), command_channel.encode_event(event_type, payload)
    )


def round_trips(action: str, result: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "appsup_command_round_trip_seconds_count", {"action": action, "environment": "env_x", "result": result}
        )
        or 0.0
    )


def test_registration_statuses_acks_and_bad_events(redis_conn):
    now = time.time()
    emit(
        "register", env="env_x", url="http://127.0.0.1:9", version="1.2", host="h", pid=42, apps_running=["crm"], at=now
    )
    redis_conn.xadd(command_channel.events_stream(), {"type": "status", "data": "{not json"})
    emit("teleport", env="env_x")
    emit("status", app="../x", env="env_x", status="running", at=now)
    assert events.ingest() >= 4  # plus any beats of the shared test cluster's workers
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
    events.ingest()
    assert AppEnvironment.objects.get(application=app).status == "stopped"
    assert AuditEntry.objects.get(request_id=request_id).result == "ok"
    assert round_trips("stop", "ok") == before + 1

    # A request on two environments is ok only once both acknowledged ok.
    env_y = actions.register_environment(name="env_y", url="http://127.0.0.1:9")
    both = actions.create_application(name="crm_two", environments=[env, env_y])
    two = actions.request_stop(both)
    emit("ack", id="c3", env="env_x", result="ok", request_id=two, app="crm_two", action="stop")
    events.ingest()
    assert AuditEntry.objects.get(request_id=two).result == "pending"
    emit("ack", id="c4", env="env_y", result="ok", request_id=two, app="crm_two", action="stop")
    events.ingest()
    assert AuditEntry.objects.get(request_id=two).result == "ok"

    failed = actions.request_stop(app)
    emit("ack", id="c2", env="env_x", result="expired", request_id=failed, app="crm", action="stop")
    events.ingest()
    entry = AuditEntry.objects.get(request_id=failed)
    assert entry.result == "error" and "expired" in entry.error

    # Several ingesters may apply one stream's events out of order: a newer report applied
    # first is not undone by an older one.
    stream = command_channel.events_stream()
    first = emit("status", app="crm", env="env_x", status="running", at=time.time())
    second = emit("status", app="crm", env="env_x", status="stopped", at=time.time())
    for entry_id in (second, first):
        fields = redis_conn.xrange(stream, entry_id, entry_id)[0][1]
        events.apply_event(fields, events._entry_time(entry_id, 0.0))
    assert AppEnvironment.objects.get(application=app).status == "stopped"
    # Likewise a beat applied after a later deregistration does not bring the environment back.
    beat = emit("heartbeat", env="env_x", url="http://127.0.0.1:9", at=time.time())
    gone = emit("deregister", env="env_x", at=time.time())
    for entry_id in (gone, beat):
        fields = redis_conn.xrange(stream, entry_id, entry_id)[0][1]
        events.apply_event(fields, events._entry_time(entry_id, 0.0))
    assert Environment.objects.get(name="env_x").stopped_at is not None
    events.ingest()
    assert Environment.objects.get(name="env_x").stopped_at is not None
    pending = redis_conn.xpending(stream, command_channel.SUPERVISOR_GROUP)
    assert pending["pending"] == 0
