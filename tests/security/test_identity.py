"""Environment identity (docs/security.md, "Identity"): a name is bound to the key of the
first worker that claims it; whatever else claims it, or writes protocol entries straight into
Redis, is refused, counted and, once, audited. Commands act only with the supervisor's
signature. Real Redis and PostgreSQL; the impostor and the commands use real agents."""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.error
import urllib.request

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.test import Client

from apps_registry import signing
from apps_registry.control import channel, ingest, keys, liveness, protocol, redis_client
from apps_registry.control.discovery import get_discovery
from apps_registry.control.runners import remote
from apps_registry.models import AppEnvironment, AppStatus, AuditEntry, Environment
from apps_registry.observability import metrics
from apps_registry.registry import actions
from tests.support import identity, services
from tests.support.cluster import _create_database, worker_environ
from tests.support.processes import PYTHON, Process, free_port, wait_until
from tests.support.users import create_user

pytestmark = pytest.mark.django_db(transaction=True)


def refused(reason: str) -> float:
    return metrics.EVENTS_REFUSED.labels(reason=reason)._value.get()


def refusal_audits(env: str) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(action="environment_message_refused", environments=[env]))


def drain() -> None:
    wait_until(lambda: ingest.ingest() == 0, timeout=10, interval=0.05, message="events stream drained")


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.cluster
def test_a_second_worker_claiming_env_a_changes_nothing_and_gets_no_traffic(cluster_logs, recorder, tmp_path):
    real = cluster_logs.env_a
    real_key = identity.public(real.key())

    def bound() -> bool:
        ingest.ingest()
        return Environment.objects.filter(name="env_a", public_key=real_key).exists()

    wait_until(bound, timeout=15, message="env_a bound to its worker's key")
    before = Environment.objects.get(name="env_a")
    app = actions.create_application(name=f"idt_{services.RUN_ID}", environments=[before])
    AppEnvironment.objects.filter(application=app).update(status=AppStatus.RUNNING)
    recorder_url, seen = recorder
    seen.clear()

    # Another run_worker calling itself env_a: its own storage (so its own key), its own URL
    # (the recording upstream: any request the proxy sent it would be seen).
    env = {
        **worker_environ("env_a", free_port()),
        "ENVIRONMENT_URL": recorder_url,
        "APP_STORAGE_DIR": str(tmp_path / "impostor"),
        "DB_DATABASE": f"{services.RUN_ID}_worker_impostor",
    }
    _create_database(env["DB_DATABASE"])
    conflicts = refused("conflict")
    impostor = Process("impostor-agent", [PYTHON, "manage.py", "run_worker"], env, tmp_path).start()
    try:

        def refused_twice() -> bool:
            ingest.ingest()
            return refused("conflict") >= conflicts + 2  # its registration and a heartbeat (every 5 s)

        wait_until(refused_twice, timeout=30, interval=0.2, message="the impostor's messages refused")
        after = Environment.objects.get(name="env_a")
        for field in ("url", "proxy_url", "host", "pid", "public_key", "version", "enabled", "approved"):
            assert getattr(after, field) == getattr(before, field), field
        assert liveness.environment_statuses([after])["env_a"][0] == "online"
        assert AppEnvironment.objects.get(application=app).status == AppStatus.RUNNING
        # Shown once: on the row (for the admin) and one audit entry however many were refused.
        assert after.refused_key and after.refused_key != real_key
        assert after.refused_reason.startswith("conflicting registration for env_a from host ")
        audits = refusal_audits("env_a")
        assert len(audits) == 1 and audits[0].error.startswith("conflicting registration for env_a from host ")
        # The proxy still sends env_a's traffic to env_a: nothing reaches the impostor.
        for path in ("/", "/admin/", "/admin/login/"):
            Client().get(f"/apps/{app.name}{path}")
        assert seen == []
        assert impostor.alive()
    finally:
        impostor.stop()


def test_forged_registration_status_and_ack_entries_are_refused_and_counted(redis_conn, settings):
    key = identity.env_key("env_f")
    env = actions.register_environment(name="env_f", url="http://127.0.0.1:9", public_key=identity.public(key))
    app = actions.create_application(name="forged_app", environments=[env])
    request_id = actions.request_stop(app)  # a request waiting for env_f's acknowledgement
    AppEnvironment.objects.filter(application=app).update(status=AppStatus.RUNNING)
    stream = keys.events_stream()
    drain()
    counts = {reason: refused(reason) for reason in ("unsigned", "bad_signature", "conflict", "stale")}
    now = time.time()
    takeover = protocol.Registration("env_f", "http://evil.example:1", "", "x", "evil", 1, (), now)
    error = protocol.StatusReport("forged_app", "env_f", "error", "forged", now)
    ack = protocol.Ack("c1", "env_f", "ok", at=now, request_id=request_id, app="forged_app", action="stop")
    impostor = identity.env_key("impostor")
    redis_conn.xadd(stream, takeover.encode())  # unsigned
    redis_conn.xadd(stream, identity.signed_event(takeover, impostor))  # another key
    redis_conn.xadd(stream, error.encode())  # unsigned
    tampered = identity.signed_event(protocol.StatusReport("forged_app", "env_f", "running", "", now), key)
    redis_conn.xadd(stream, {**tampered, "data": error.encode()["data"]})  # the genuine signature, other data
    redis_conn.xadd(stream, ack.encode())  # unsigned
    # A genuine report copied again an hour later: an old message.
    old = protocol.StatusReport("forged_app", "env_f", "error", "old", now - 3600)
    redis_conn.xadd(stream, identity.signed_event(old, key))
    drain()

    env.refresh_from_db()
    assert (env.url, env.host, env.public_key) == ("http://127.0.0.1:9", "", identity.public(key))
    assert AppEnvironment.objects.get(application=app).status == AppStatus.RUNNING
    assert AuditEntry.objects.get(request_id=request_id).result == AuditEntry.Result.PENDING
    assert refused("unsigned") == counts["unsigned"] + 3
    assert refused("conflict") == counts["conflict"] + 1
    assert refused("bad_signature") == counts["bad_signature"] + 1
    assert refused("stale") == counts["stale"] + 1

    # A flood of conflicting claims: one audit entry (rate-limited), the row counts them all.
    audited = len(refusal_audits("env_f"))
    for _ in range(50):
        redis_conn.xadd(stream, identity.signed_event(dataclasses.replace(takeover, at=time.time()), impostor))
    drain()
    assert len(refusal_audits("env_f")) == audited
    env.refresh_from_db()
    assert env.refused_count >= 50 and env.refused_key == identity.public(impostor)


def test_a_forged_ack_on_the_ack_list_does_not_end_a_wait(redis_conn):
    key = identity.env_key("env_w")
    actions.register_environment(name="env_w", url="http://127.0.0.1:9", public_key=identity.public(key))
    forged = protocol.Ack("w1", "env_w", "ok", at=time.time())
    impostor = identity.env_key("impostor")
    redis_conn.lpush(keys.ack("w1"), forged.to_json())  # not even an envelope
    redis_conn.lpush(keys.ack("w1"), protocol.signed_ack_json(identity.signed_event(forged, impostor)))
    assert channel.wait_for_ack("w1", 0.5, env="env_w") is None
    redis_conn.lpush(keys.ack("w1"), protocol.signed_ack_json(identity.signed_event(forged, key)))
    assert channel.wait_for_ack("w1", 2, env="env_w")["result"] == "ok"


def test_a_lease_not_signed_by_the_bound_key_is_no_sighting(redis_conn):
    key = identity.env_key("env_l")
    env = actions.register_environment(name="env_l", url="http://127.0.0.1:9", public_key=identity.public(key))
    Environment.objects.filter(pk=env.pk).update(last_heartbeat=None)
    env.refresh_from_db()
    lease_key = keys.lease("env_l", signing.fingerprint(env.public_key))
    redis_conn.set(lease_key, json.dumps({"at": f"{time.time():.6f}", "env": "env_l"}))  # unsigned, the right key
    assert liveness.environment_statuses([env])["env_l"][0] == "offline"
    identity.write_lease("env_l", time.time(), key=identity.env_key("impostor"))  # its own key: not env_l's
    assert liveness.environment_statuses([env])["env_l"][0] == "offline"
    identity.write_lease("env_l", time.time(), key=key)
    assert liveness.environment_statuses([env])["env_l"][0] == "online"


def test_with_approval_on_a_new_environment_waits_until_an_operator_approves_it(redis_conn, settings):
    settings.APP_CONFIG = dataclasses.replace(settings.APP_CONFIG, environment_approval=True)
    registration = protocol.Registration("env_new", "http://127.0.0.1:9", "", "1", "h", 1, (), time.time())
    redis_conn.xadd(keys.events_stream(), identity.signed_event(registration))
    drain()
    env = Environment.objects.get(name="env_new")
    assert (env.approved, env.enabled, env.public_key) == (False, False, identity.public(identity.env_key("env_new")))
    with pytest.raises(actions.NotApproved):
        actions.set_environment_enabled(env, True)

    url = "/admin/apps_registry/environment/"
    staff = Client()
    staff.force_login(create_user("no_approve", ["view_environment", "change_environment"]))
    assert "approve_environments" not in staff.get(url).content.decode()
    operator = Client()
    operator.force_login(create_user("approver", ["view_environment", "change_environment", "approve_environment"]))
    page = operator.get(url).content.decode()
    assert "pending approval" in page and "approve_environments" in page
    post = {"action": "approve_environments", ACTION_CHECKBOX_NAME: [env.pk], "confirm": "yes"}
    assert operator.post(url, post).status_code == 302
    env.refresh_from_db()
    assert env.approved and env.enabled
    entry = AuditEntry.objects.get(action="environment_approved")
    assert entry.environments == ["env_new"] and entry.user.username == "approver"


def test_the_operator_rebinds_an_environment_to_a_new_key(redis_conn):
    old, new = identity.env_key("env_rb"), identity.env_key("env_rb-replaced")
    env = actions.register_environment(name="env_rb", url="http://127.0.0.1:9", public_key=identity.public(old))
    app = actions.create_application(name="rebound", environments=[env])
    report = protocol.StatusReport("rebound", "env_rb", "running", "", time.time())
    redis_conn.xadd(keys.events_stream(), identity.signed_event(report, new))
    drain()
    assert AppEnvironment.objects.get(application=app).status == AppStatus.STOPPED  # refused: not the bound key

    url = "/admin/apps_registry/environment/"
    operator = Client()
    operator.force_login(create_user("rebinder", ["view_environment", "rebind_environment"]))
    post = {"action": "rebind_environments", ACTION_CHECKBOX_NAME: [env.pk], "confirm": "yes"}
    assert operator.post(url, post).status_code == 302
    env.refresh_from_db()
    assert env.public_key == identity.public(new) and not env.refused_key
    entry = AuditEntry.objects.get(action="environment_rebound")
    assert entry.user.username == "rebinder" and signing.fingerprint(identity.public(new)) in entry.error

    redis_conn.xadd(keys.events_stream(), identity.signed_event(dataclasses.replace(report, at=time.time()), new))
    stale = protocol.StatusReport("rebound", "env_rb", "error", "from the old key", time.time())
    redis_conn.xadd(keys.events_stream(), identity.signed_event(stale, old))
    drain()
    assert AppEnvironment.objects.get(application=app).status == AppStatus.RUNNING


@pytest.mark.cluster
def test_a_command_not_signed_by_the_supervisor_is_not_carried_out(cluster_logs):
    worker = cluster_logs.env_a
    env = actions.register_environment(name="env_a", url=worker.url)
    get_discovery().ensure_built()
    app = actions.create_application(name=f"signed_{services.RUN_ID}", environments=[env])
    generation = app.generation
    assert actions.begin_environment_start(app.name, "env_a", generation=generation) == "starting"
    error = remote.start_on_environment(app.name, "env_a", generation=generation, request_id="s", timeout=60)
    assert error is None, error
    page = f"{worker.url}/apps/{app.name}/admin/login/"
    wait_until(lambda: http_status(page) == 200, timeout=30, message="app served on env_a")

    client = redis_client.commands()
    stream = keys.command_stream("env_a")
    now = time.time()
    fields = {
        "id": f"unsigned-{services.RUN_ID}",
        "action": "remove",
        "app": app.name,
        "generation": str(generation + 5),
        "request_id": "forged",
        "issued_at": f"{now:.3f}",
        "expires_at": f"{now + 60:.3f}",
        "drop_data": "1",
        "incarnation": str(app.incarnation),
    }
    other_supervisor = protocol.sign_command(fields, "env_a", signing.generate())
    unsigned_entry = client.xadd(stream, fields)
    forged_entry = client.xadd(stream, other_supervisor)
    for entry_id in (unsigned_entry, forged_entry):
        ack = channel.wait_for_ack(f"entry-{entry_id}", 15)
        assert ack is not None and ack["result"] == "refused", ack
    assert channel.wait_for_ack(fields["id"], 0.5) is None, "a refused command's id is not acknowledged"
    assert http_status(page) == 200, "still served: the remove was not carried out"
    assert "refusing command entry" in worker.agent.log()

    # The supervisor's own command still works.
    stop = channel.send_command(
        "env_a", "stop", app.name, generation=generation + 6, request_id="s2", incarnation=str(app.incarnation)
    )
    assert channel.wait_for_ack(stop, 15, env="env_a")["result"] == "ok"
    wait_until(lambda: http_status(page) == 503, timeout=10, message="stopped by the signed command")
