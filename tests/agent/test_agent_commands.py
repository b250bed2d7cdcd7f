"""Commands through the Redis channel to real workers: acks, statuses, durability,
expiry, duplicates, generations, reconciliation, shared data, malformed input."""

from __future__ import annotations

import http.cookiejar
import re
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.db import transaction

from apps_registry.control import channel, ingest, keys, protocol, redis_client
from apps_registry.control.discovery import get_discovery
from apps_registry.control.runners import remote
from apps_registry.models import AppEnvironment, Application, AuditEntry, Environment
from apps_registry.registry import actions, outbox
from tests.support import identity, services
from tests.support.cluster import RECONCILE_INTERVAL
from tests.support.processes import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct horse battery"
# The workers check it with their default hashers (the test process only knows MD5).
PASSWORD_HASH = PBKDF2PasswordHasher().encode(PASSWORD, "testsalt", iterations=1000)


def last_reported(app: str, env: str) -> str | None:
    """The newest status the worker reported for the app (its latest ``status`` event)."""
    for _entry_id, fields in redis_client.commands().xrevrange(keys.events_stream(), count=200):
        if fields.get("type") == "status":
            report = protocol.StatusReport.decode(fields)
            if (report.app, report.env) == (app, env):
                return report.status
    return None


@pytest.fixture
def envs(cluster_logs):
    """Both environments in this test's (flushed) registry, and a built config cache."""
    result = {
        name: actions.register_environment(name=name, url=worker.url) for name, worker in cluster_logs.workers.items()
    }
    get_discovery().ensure_built()
    return result


@pytest.fixture(autouse=True)
def start_job_inline(monkeypatch):
    """Plays the start queue's job (a separate piece) right after commit: one environment
    after another, marked starting then sent through ``remote.start_on_environment``, as the
    job does."""
    errors: list[str] = []

    def send_start(app, environments, *, generation, request_id):
        name, envs = app.name, list(environments)

        def job():
            for env in envs:
                if actions.begin_environment_start(name, env, generation=generation) != "starting":
                    continue
                error = remote.start_on_environment(name, env, generation=generation, request_id=request_id, timeout=60)
                if error:
                    errors.append(error)

        transaction.on_commit(job)

    monkeypatch.setattr(outbox, "send_start", send_start)
    return errors


def new_app(name: str, environments, **options) -> Application:
    options = {
        "modules": ["contacts", "tasks"],
        "initial_admin": {"username": "boss", "password_hash": PASSWORD_HASH},
        **options,
    }
    return actions.create_application(name=f"{name}_{services.RUN_ID}", environments=environments, options=options)


def status(app: Application, env: str) -> tuple[str, str]:
    ingest.ingest()
    placement = AppEnvironment.objects.get(application=app, environment__name=env)
    return placement.status, placement.error


def wait_status(app: Application, env: str, expected: str, timeout: float = 60) -> None:
    wait_until(
        lambda: status(app, env)[0] == expected, timeout=timeout, interval=0.05, message=f"{app}@{env} {expected}"
    )


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def request_result(request_id: str) -> str:
    ingest.ingest()
    return AuditEntry.objects.get(request_id=request_id).result


def test_start_stop_restart_remove_with_acks(envs, cluster_logs):
    worker = cluster_logs.env_a
    app = new_app("life", [envs["env_a"]])
    home = f"{worker.url}/apps/{app.name}/admin/login/"
    assert http_status(home) in (404, 503)  # not started there yet

    request_id = actions.request_start(app)
    wait_status(app, "env_a", "running")
    wait_until(lambda: request_result(request_id) == "ok", timeout=10, message="start acknowledged ok")
    assert last_reported(app.name, "env_a") == "running"
    wait_until(lambda: http_status(home) == 200, timeout=3, message="app served within 1 s of running")

    app.refresh_from_db()
    request_id = actions.request_stop(app)
    wait_status(app, "env_a", "stopped", timeout=10)
    wait_until(lambda: request_result(request_id) == "ok", timeout=10, message="stop acknowledged")
    wait_until(lambda: http_status(home) == 503, timeout=3, message="stopped app answers 503")

    app.refresh_from_db()
    request_id = actions.request_restart(app)
    wait_status(app, "env_a", "running", timeout=30)
    wait_until(lambda: request_result(request_id) == "ok", timeout=10, message="restart acknowledged")

    app.refresh_from_db()
    request_id = actions.request_remove(app)
    wait_status(app, "env_a", "stopped", timeout=10)
    wait_until(lambda: request_result(request_id) == "ok", timeout=10, message="remove acknowledged")
    wait_until(lambda: http_status(home) == 404, timeout=3, message="removed app unknown here")


def test_direct_commands_ack_errors_generations_and_duplicates(envs, cluster_logs):
    app = new_app("direct", [envs["env_b"]])
    gen = app.generation

    # A start of an app not placed here is refused with a clear message.
    bad = channel.send_command("env_a", "start", app.name, generation=gen + 1, request_id="r1")
    ack = channel.wait_for_ack(bad, 10)
    assert ack["result"] == "error" and "not placed on environment 'env_a'" in ack["error"]

    # Last request wins: an older generation arriving after a newer one is superseded.
    newer = channel.send_command("env_b", "stop", app.name, generation=gen + 7, request_id="r2")
    older = channel.send_command("env_b", "start", app.name, generation=gen + 6, request_id="r3")
    assert channel.wait_for_ack(newer, 10)["result"] == "ok"
    assert channel.wait_for_ack(older, 10)["result"] == "superseded"

    # A duplicate delivery (same command id twice) is carried out and acknowledged once.
    client = redis_client.commands()
    fields = {
        "id": "dup-" + services.RUN_ID,
        "action": "stop",
        "app": app.name,
        "generation": str(gen + 8),
        "request_id": "r4",
        "issued_at": str(time.time()),
        "expires_at": str(time.time() + 60),
        "drop_data": "0",
    }
    stream = keys.command_stream("env_b")
    client.xadd(stream, identity.signed_command(fields, "env_b"))
    client.xadd(stream, identity.signed_command(fields, "env_b"))
    assert channel.wait_for_ack(fields["id"], 10)["result"] == "ok"
    wait_until(
        lambda: client.xpending(stream, protocol.AGENT_GROUP)["pending"] == 0,
        timeout=5,
        message="both deliveries acknowledged in the group",
    )
    assert client.llen(keys.ack(fields["id"])) == 1


def test_check_answers_whether_the_environment_reaches_the_apps_database(envs, cluster_logs):
    """A move's pre-check: ``check`` changes nothing and answers ok or why not."""
    app = new_app("reach", [envs["env_a"]], modules=[])
    actions.request_start(app)
    wait_status(app, "env_a", "running")
    app.refresh_from_db()
    ok = channel.send_command("env_b", "check", app.name, generation=app.generation, request_id="")
    assert channel.wait_for_ack(ok, 10)["result"] == "ok"  # not placed there, and reaches it
    assert status(app, "env_a") == ("running", "")
    # Data migrated by newer module code than env_b has: env_b's modules are older.
    import psycopg

    with psycopg.connect(
        host=services.PG_HOST, port=services.PG_PORT, user=services.PG_USER, dbname=f"{services.RUN_ID}_{app.name}"
    ) as conn:
        conn.execute(
            "INSERT INTO django_migrations (app, name, applied) VALUES ('auth', '9999_from_the_future', now())"
        )
    newer = channel.send_command("env_b", "check", app.name, generation=app.generation, request_id="")
    ack = channel.wait_for_ack(newer, 10)
    assert ack["result"] == "error" and "lacks auth.9999_from_the_future" in ack["error"], ack
    away = new_app("reach_away", [envs["env_a"]], modules=[], database={"host": "127.0.0.1", "port": "1"})
    refused = channel.send_command("env_b", "check", away.name, generation=away.generation, request_id="")
    ack = channel.wait_for_ack(refused, 15)
    assert ack["result"] == "error" and "cannot connect" in ack["error"], ack
    unknown = channel.send_command("env_b", "check", "no_such_app", generation=1, request_id="")
    assert channel.wait_for_ack(unknown, 10)["error"] == "unknown app 'no_such_app'"


def test_durable_delivery_across_agent_restart_and_expiry(envs, cluster_logs):
    worker = cluster_logs.env_b
    app = new_app("durable", [envs["env_b"]])
    assert worker.stop_agent() == 0
    request_id = actions.request_start(app)  # sent while the agent is down
    app.refresh_from_db()
    late = channel.send_command("env_b", "stop", app.name, generation=app.generation, request_id="late", ttl=0.01)
    time.sleep(0.05)  # let the short TTL run out while the worker is still down
    worker.start_agent()
    wait_status(app, "env_b", "running", timeout=60)
    ack = channel.wait_for_ack(late, 20)
    assert ack["result"] == "expired" and "expired" in ack["error"]
    wait_until(lambda: request_result(request_id) == "ok", timeout=10, message="start acknowledged")
    assert status(app, "env_b")[0] == "running"  # the expired stop did not run


def test_reconciliation_after_sigkill(envs, cluster_logs):
    worker = cluster_logs.env_a
    kept = new_app("kept", [envs["env_a"]])
    actions.request_start(kept)
    wait_status(kept, "env_a", "running")
    wanted = new_app("wanted", [envs["env_a"]])

    worker.kill_agent()
    worker.kill_web()
    # Desired while the worker is dead, with no command ever sent: reconciliation must act.
    AppEnvironment.objects.filter(application=wanted).update(desired_running=True)
    get_discovery().publish_app_by_pk(wanted.pk)
    worker.start_web()
    worker.start_agent()
    worker.wait_web()

    wait_until(
        lambda: http_status(f"{worker.url}/apps/{kept.name}/admin/login/") == 200,
        timeout=20,
        message="app running before the SIGKILL serves again",
    )
    wait_status(wanted, "env_a", "running", timeout=60)
    assert http_status(f"{worker.url}/apps/{wanted.name}/admin/login/") == 200
    assert "reconciliation: starting " + wanted.name in worker.agent.log()


def test_a_worker_back_unloads_the_apps_no_longer_placed_there(envs, cluster_logs):
    """The environment was forgotten while its worker was away: the worker that comes back
    unloads what it still runs (data kept) and reports it stopped, but only from a built
    cache, never from one that is empty because Redis restarted."""
    worker = cluster_logs.env_a
    gone = new_app("gone", [envs["env_a"]])
    actions.request_start(gone)
    wait_status(gone, "env_a", "running")
    home = f"{worker.url}/apps/{gone.name}/admin/login/"
    wait_until(lambda: http_status(home) == 200, timeout=5, message="app served")
    assert worker.stop_agent() == 0  # the web processes keep serving the app
    actions.forget_environment(Environment.objects.get(name="env_a"))
    redis_client.get().delete(keys.cfg_built())  # as after a Redis restart: the cache is not built
    worker.start_agent()
    worker.wait_registered()
    time.sleep(3 * RECONCILE_INTERVAL)
    assert http_status(home) == 200, "unloaded on a cache that is not built"
    assert "reconciliation postponed" in worker.agent.log()

    get_discovery().ensure_built(force=True)
    wait_until(lambda: http_status(home) == 404, timeout=30, message="stray app unloaded")
    wait_until(lambda: last_reported(gone.name, "env_a") == "stopped", timeout=10, message="reported stopped")
    time.sleep(2 * RECONCILE_INTERVAL)
    assert worker.agent.log().count(f"reconciliation: unloading {gone.name}") == 1


def _login(opener, base: str, app: str) -> None:
    url = f"{base}/apps/{app}/admin/login/"
    page = opener.open(url, timeout=10).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    body = urllib.parse.urlencode(
        {"csrfmiddlewaretoken": token, "username": "boss", "password": PASSWORD, "next": f"/apps/{app}/admin/"}
    ).encode()
    response = opener.open(urllib.request.Request(url, data=body), timeout=10)
    assert "/login/" not in response.geturl(), "login refused"


def test_one_app_on_both_environments_shares_its_data(envs, cluster_logs):
    app = new_app("shared", [envs["env_a"], envs["env_b"]])
    actions.request_start(app)
    wait_status(app, "env_a", "running")
    wait_status(app, "env_b", "running")
    # The session written by env_a lives in the app's one database, so env_b accepts it.
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    _login(opener, cluster_logs.env_a.url, app.name)
    response = opener.open(f"{cluster_logs.env_b.url}/apps/{app.name}/admin/", timeout=10)
    assert "/login/" not in response.geturl()
    assert response.status == 200

    # The periodic heartbeat (every 5 s here) carries the apps each environment runs.
    def listed_everywhere():
        ingest.ingest()
        return all(app.name in env.apps_running for env in Environment.objects.filter(name__in=["env_a", "env_b"]))

    wait_until(listed_everywhere, timeout=12, interval=0.2, message="heartbeats listing the app")


def test_malformed_messages_are_acked_as_errors_and_the_agent_survives(envs, cluster_logs):
    client = redis_client.commands()
    stream = keys.command_stream("env_a")
    future = str(time.time() + 60)
    base = {"generation": "1", "request_id": "m", "issued_at": str(time.time()), "expires_at": future}
    # Signed by the supervisor, yet malformed: refused by validation, not by the signature.
    bad_json = client.xadd(stream, identity.signed_command({"json": "{not json"}, "env_a"))
    cases = {
        "m-action": ({**base, "id": "m-action", "action": "explode", "app": "crm"}, "unknown action"),
        "m-name": ({**base, "id": "m-name", "action": "start", "app": "../etc"}, "invalid app name"),
        "m-ghost": ({**base, "id": "m-ghost", "action": "start", "app": "ghost_app"}, "unknown app"),
        "m-fields": ({"id": "m-fields", "action": "stop", "app": "crm"}, "must be numbers"),
    }
    for fields, _ in cases.values():
        client.xadd(stream, identity.signed_command(fields, "env_a"))
    for command_id, (_, message) in cases.items():
        ack = channel.wait_for_ack(command_id, 10)
        assert ack["result"] == "error" and message in ack["error"], ack
    ack = channel.wait_for_ack(f"entry-{bad_json}", 10)
    assert ack["result"] == "error" and "bad JSON" in ack["error"]
    assert cluster_logs.env_a.agent.alive()
    app = new_app("after", [envs["env_a"]])
    request_id = actions.request_start(app)
    wait_status(app, "env_a", "running")
    assert Environment.objects.filter(name="env_a").exists()
    wait_until(lambda: request_result(request_id) == "ok", timeout=10, message="valid command after bad ones")


def test_command_interrupted_by_sigkill_runs_again_after_restart(envs, cluster_logs):
    worker = cluster_logs.env_b
    app = new_app("crashed", [envs["env_b"]])
    client = redis_client.commands()

    command_id = channel.send_command("env_b", "start", app.name, generation=app.generation + 1, request_id="c")
    wait_until(
        lambda: last_reported(app.name, "env_b") == "starting", timeout=20, interval=0.005, message="start under way"
    )
    worker.kill_agent()  # read but never acknowledged: pending in the group
    assert client.llen(keys.ack(command_id)) == 0
    worker.start_agent()
    ack = channel.wait_for_ack(command_id, 60)
    assert ack["result"] == "ok", ack
    # The ack came from the restarted agent (it logs each command after acknowledging it).
    wait_until(
        lambda: f"command {command_id} start {app.name}: ok"
        in worker.agent.log().split("agent for environment env_b starting")[-1],
        timeout=5,
        message="the restarted agent ran the command",
    )


def test_failed_start_shows_error_status_with_its_message(envs, cluster_logs, start_job_inline):
    app = new_app("broken", [envs["env_a"]], modules=["contacts", "payroll"])
    request_id = actions.request_start(app)
    wait_status(app, "env_a", "error", timeout=20)
    error = status(app, "env_a")[1]
    assert "payroll" in error
    assert start_job_inline and "payroll" in start_job_inline[0]
    entry = AuditEntry.objects.get(request_id=request_id)
    assert entry.result == "error" and "payroll" in entry.error
    # Reconciliation (every 2 s here) does not retry the failed start in a loop.
    time.sleep(2.5)  # longer than one reconciliation interval: a retry would show by now
    assert "reconciliation: starting " + app.name not in cluster_logs.env_a.agent.log()
