"""Every request's audit entry follows it to an outcome per environment: ok, error, superseded,
not delivered, converged later — never pending for ever (in-process, real Redis and PostgreSQL)."""

import datetime as dt
import time

import pytest
from django.conf import settings
from django.utils import timezone

from apps_registry.control import ingest, keys, redis_client, undelivered
from apps_registry.models import AuditEntry, Environment
from apps_registry.registry import actions
from tests.support import identity

pytestmark = pytest.mark.django_db(transaction=True)


def emit(event_type: str, **payload) -> str:
    """An event as the environment's agent would write it: signed (tests/support/identity.py)."""
    payload.setdefault("at", time.time())
    fields = identity.signed_fields(event_type, payload, str(payload.get("env", "")))
    return redis_client.commands().xadd(keys.events_stream(), fields)


def take(redis_conn, ids: list[str]) -> list:
    return [entry for entry in redis_conn.xrange(keys.events_stream()) if entry[0] in ids]


def entry(request_id: str) -> AuditEntry:
    return AuditEntry.objects.get(request_id=request_id)


def later(seconds: float) -> dt.datetime:
    return timezone.now() + dt.timedelta(seconds=seconds)


@pytest.fixture
def app(redis_conn):
    env_p = actions.register_environment(name="env_p", url="http://127.0.0.1:9")
    env_q = actions.register_environment(name="env_q", url="http://127.0.0.1:9")
    return actions.create_application(name="outc", environments=[env_p, env_q])


def test_an_offline_environment_ends_not_delivered_then_converged_later(redis_conn, app):
    request_id = actions.request_stop(app)
    ids = [emit("ack", id="a1", env="env_p", result="ok", request_id=request_id)]
    ingest.apply_entries(take(redis_conn, ids))
    assert (entry(request_id).result, entry(request_id).outcomes) == ("pending", {"env_p": "ok"})

    # Not yet: an environment gets the offline delay before its silence counts.
    assert undelivered.close_undeliverable(now=timezone.now()) == 0
    # Both environments have been silent for longer than that now; env_p has answered already.
    assert undelivered.close_undeliverable(now=later(settings.APP_CONFIG.offline_after + 60)) == 1
    closed = entry(request_id)
    assert (closed.result, closed.outcomes) == ("error", {"env_p": "ok", "env_q": "not delivered"})
    assert closed.error.startswith("env_q: not delivered, the environment is offline (last seen ")
    assert closed.awaiting_convergence
    assert undelivered.close_undeliverable(now=later(settings.APP_CONFIG.offline_after + 60)) == 0  # once

    # env_q comes back and reconciles to the registry's desired state (stopped).
    ids = [emit("status", app="outc", env="env_q", status="stopped", incarnation=str(app.incarnation))]
    ingest.apply_entries(take(redis_conn, ids))
    converged = entry(request_id)
    assert (converged.result, converged.outcomes) == ("ok", {"env_p": "ok", "env_q": "converged later"})
    assert not converged.awaiting_convergence
    assert "not delivered" in converged.error  # what happened first stays readable


def test_a_late_ok_acknowledgement_converges_and_a_newer_request_takes_over(redis_conn, app):
    stop = actions.request_stop(app)
    ids = [
        emit("ack", id="b1", env="env_p", result="ok", request_id=stop),
        emit("ack", id="b2", env="env_q", result="expired", request_id=stop),
    ]
    ingest.apply_entries(take(redis_conn, ids))
    assert (entry(stop).result, entry(stop).outcomes["env_q"]) == ("error", "not delivered")
    ids = [emit("ack", id="b3", env="env_q", result="ok", request_id=stop)]
    ingest.apply_entries(take(redis_conn, ids))
    assert (entry(stop).result, entry(stop).outcomes["env_q"]) == ("ok", "converged later")

    failed = actions.request_stop(app)
    ids = [
        emit("ack", id="c1", env="env_p", result="ok", request_id=failed),
        emit("ack", id="c2", env="env_q", result="error", error="disk full", request_id=failed),
    ]
    ingest.apply_entries(take(redis_conn, ids))
    assert entry(failed).awaiting_convergence
    start = actions.request_start(app)
    # The newer request decides: the failed stop no longer turns into "converged later".
    assert not entry(failed).awaiting_convergence
    ids = [emit("status", app="outc", env="env_q", status="stopped", incarnation=str(app.incarnation))]
    ingest.apply_entries(take(redis_conn, ids))
    assert (entry(failed).result, entry(failed).outcomes["env_q"]) == ("error", "error")
    assert entry(start).result == "pending"


def test_a_superseded_request_is_never_shown_ok(redis_conn, app):
    request_id = actions.request_stop(app)
    ids = [
        emit("ack", id="d1", env="env_p", result="ok", request_id=request_id),
        emit("ack", id="d2", env="env_q", result="superseded", request_id=request_id),
    ]
    ingest.apply_entries(take(redis_conn, ids))
    assert (entry(request_id).result, entry(request_id).outcomes) == (
        "superseded",
        {"env_p": "ok", "env_q": "superseded"},
    )
    # A late ok for the overtaken environment does not rewrite its outcome.
    ids = [emit("ack", id="d3", env="env_q", result="ok", request_id=request_id)]
    ingest.apply_entries(take(redis_conn, ids))
    assert entry(request_id).result == "superseded"


def test_a_forgotten_environment_ends_not_delivered_without_a_promise(redis_conn, app):
    request_id = actions.request_stop(app)
    ids = [emit("ack", id="e1", env="env_p", result="ok", request_id=request_id)]
    ingest.apply_entries(take(redis_conn, ids))
    AuditEntry.objects.filter(request_id=request_id).update(at=later(-600))
    Environment.objects.filter(name="env_q").delete()  # as forget_environment would, after its checks
    assert undelivered.close_undeliverable() == 1
    closed = entry(request_id)
    assert closed.outcomes["env_q"] == "not delivered"
    assert closed.error == "env_q: not delivered, the environment was forgotten"


def test_a_pending_stop_whose_command_was_lost_ends_ok_from_a_later_report(redis_conn, app):
    """Redis restarted empty took the command with it; the worker reconciles to the registry's
    desired state instead, and its report after the request is the request's outcome there."""
    import time

    # Appended before the request, ingested after it (times are the stream's).
    old = [emit("status", app="outc", env="env_p", status="stopped", incarnation=str(app.incarnation))]
    request_id = actions.request_stop(app)
    ingest.apply_entries(take(redis_conn, old))
    assert entry(request_id).outcomes == {}  # a report from before the request proves nothing
    ids = [
        emit("status", app="outc", env=env, status="stopped", incarnation=str(app.incarnation), at=time.time())
        for env in ("env_p", "env_q")
    ]
    ingest.apply_entries(take(redis_conn, ids))
    assert (entry(request_id).result, entry(request_id).outcomes) == ("ok", {"env_p": "ok", "env_q": "ok"})
    # A restart is not proved by "running": it waits for its own acknowledgement.
    restart = actions.request_restart(app)
    ids = [emit("status", app="outc", env="env_p", status="running", incarnation=str(app.incarnation), at=time.time())]
    ingest.apply_entries(take(redis_conn, ids))
    assert entry(restart).result == "pending"
