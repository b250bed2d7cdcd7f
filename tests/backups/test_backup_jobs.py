"""Backup jobs as the queue worker runs them (the test is the queue worker: it takes each job
off the real queue and runs it), with the API in front and the real PostgreSQL behind: backup,
list, drill (verified, and failed on a corrupted part), retention, restore, clone, bad input."""

from __future__ import annotations

import dataclasses

import psycopg
import pytest
from django.conf import settings
from django.test import Client, override_settings

from apps_registry.control.backups import engine, health, schedule, targets
from apps_registry.control.backups.jobs import JOB_PREFIX, run_job
from apps_registry.control.backups.store import DirectoryStore
from apps_registry.control.start_queue.enqueue import get_queue
from apps_registry.models import Application, AuditEntry, Backup, Environment, Job
from apps_registry.registry import actions, jobs
from tests.support import services
from tests.support.api import ApiClient
from tests.support.users import create_user

pytestmark = pytest.mark.django_db(transaction=True)


def _pg(name: str):
    return psycopg.connect(
        host=services.PG_HOST, port=services.PG_PORT, user=services.PG_USER, dbname=name, autocommit=True
    )


@pytest.fixture
def api():
    document = Client().get("/api/v1/openapi.json").json()
    return ApiClient.for_user(create_user("bkroot", superuser=True), document=document)


@pytest.fixture
def store(tmp_path):
    config = dataclasses.replace(
        settings.APP_CONFIG, backup_dir=tmp_path / "backups", media_dir=tmp_path / "media", metrics_token="bk-metrics"
    )
    with override_settings(APP_CONFIG=config):
        yield DirectoryStore(config.backup_dir)


@pytest.fixture
def app(store):
    env = Environment.objects.create(name="env_a", url="http://127.0.0.1:15000")
    created = actions.create_application(name="bk_jobs", environments=[env], options={"modules": ["contacts"]})
    database = targets.app_database(created.name, created.options)
    targets.create_empty(database)
    with _pg(database.name) as conn:
        conn.execute("CREATE TABLE contacts_contact (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO contacts_contact SELECT i, 'c' || i FROM generate_series(1, 50) i")
    uploads = targets.media_root(created.name) / "contacts"
    uploads.mkdir(parents=True)
    (uploads / "card.txt").write_text("hello")
    yield created
    for name in ("bk_jobs", "bk_copy"):
        targets.drop(targets.app_database(name, {}))


def _metrics() -> str:
    return Client().get("/metrics", HTTP_AUTHORIZATION="Bearer bk-metrics").content.decode()


def _run(job_id: str) -> Job:
    """Take the job off the queue, as the queue worker would, and run it here."""
    queue = get_queue()
    assert f"{JOB_PREFIX}{job_id}" in queue.get_job_ids()
    queue.remove(f"{JOB_PREFIX}{job_id}")
    run_job(job_id)
    return Job.objects.get(pk=job_id)


def _names(app_name: str) -> list:
    with _pg(targets.app_database(app_name, {}).name) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM contacts_contact ORDER BY id")]


def _back_up(api, name: str = "bk_jobs") -> Backup:
    status, body = api.call("POST", f"/api/v1/apps/{name}/backups", "/apps/{name}/backups")
    assert status == 202, body
    job = _run(body["job_id"])
    assert job.status == "succeeded", job.error
    assert [s.status for s in job.steps.all()] == ["succeeded", "succeeded"]
    return Backup.objects.get(job=job)


def test_backup_listed_then_a_drill_proves_it(api, app):
    backup = _back_up(api)
    status, body = api.call("GET", "/api/v1/apps/bk_jobs/backups", "/apps/{name}/backups")
    assert status == 200
    (listed,) = body["backups"]
    assert listed["id"] == str(backup.pk) and listed["status"] == "succeeded" and listed["verified_at"] is None
    assert listed["size"] == backup.size > 0 and listed["checksum"] == backup.checksum
    assert backup.manifest["tables"]["contacts_contact"] == 50
    assert health.of_apps(["bk_jobs"])["bk_jobs"].flag == health.NEVER_VERIFIED

    config = dataclasses.replace(settings.APP_CONFIG, backup_drill_interval=3600.0)
    with override_settings(APP_CONFIG=config):
        assert schedule.run_due()["drills"] == ["bk_jobs"]
        drill = Job.objects.get(kind="drill")
        assert schedule.run_due()["drills"] == []  # one waiting already
    assert _run(str(drill.pk)).status == "succeeded"
    backup.refresh_from_db()
    assert backup.verify_status == "verified" and backup.verified_at is not None
    assert health.of_apps(["bk_jobs"])["bk_jobs"].flag == ""
    status, body = api.call("GET", "/api/v1/apps/bk_jobs/backups")
    assert body["backups"][0]["verified_at"] is not None
    with _pg(settings.DATABASES["default"]["NAME"]) as conn:  # the scratch database is gone
        assert not conn.execute("SELECT 1 FROM pg_database WHERE datname LIKE %s", ("%drill_%",)).fetchone()
    metrics = _metrics()
    assert 'appsup_backup_unproven{app="bk_jobs"} 0.0' in metrics
    assert 'appsup_backup_last_verified_restore_timestamp_seconds{app="bk_jobs"}' in metrics


def test_a_drill_marks_a_corrupted_backup_failed(api, app, store):
    backup = _back_up(api)
    part = store.path(f"{backup.location}/{engine.FILES_PART}")
    part.write_bytes(part.read_bytes()[:-10] + b"x" * 10)
    drill = actions.request_drill(backup)
    from apps_registry.control.backups.jobs import enqueue_job

    enqueue_job(drill)
    done = _run(str(drill.pk))
    assert done.status == "failed" and "files.tar does not match its checksum" in done.error
    steps = {s.name: s.status for s in done.steps.all()}
    assert steps == {
        "verify": "failed",
        "restore into scratch": "cancelled",
        "check": "cancelled",
        "clean up": "succeeded",
    }
    backup.refresh_from_db()
    assert backup.verify_status == "failed" and backup.verified_at is None and "files.tar" in backup.verify_error
    assert health.of_apps(["bk_jobs"])["bk_jobs"].flag == health.DRILL_FAILED
    assert AuditEntry.objects.filter(action="backup_unrestorable", app_name="bk_jobs", result="error").exists()
    assert 'appsup_backup_unproven{app="bk_jobs"} 1.0' in _metrics()


def test_retention_keeps_the_newest_n(api, app, store):
    app.options = {**app.options, "backups": {"keep": 2}}
    app.save(update_fields=["options"])
    made = [_back_up(api) for _ in range(3)]
    kept = list(Backup.objects.filter(app_name="bk_jobs").order_by("created_at"))
    assert kept == made[1:]
    assert not store.path(made[0].location).exists() and store.path(made[2].location).exists()
    assert AuditEntry.objects.filter(action="backups_pruned", app_name="bk_jobs").count() == 1


def test_restore_into_the_app_and_into_a_clone(api, app):
    backup = _back_up(api)
    with _pg(targets.app_database("bk_jobs", {}).name) as conn:
        conn.execute("DELETE FROM contacts_contact WHERE id > 5")
    (targets.media_root("bk_jobs") / "contacts" / "card.txt").unlink()

    status, body = api.call("POST", "/api/v1/apps/bk_jobs/restore", "/apps/{name}/restore", {"backup": str(backup.pk)})
    assert status == 202, body
    job = _run(body["job_id"])
    assert job.status == "succeeded", job.error
    # Not running anywhere: nothing to stop or start.
    assert {s.name: s.status for s in job.steps.all()} == {
        "verify": "succeeded",
        "stop": "skipped",
        "restore": "succeeded",
        "start": "skipped",
    }
    assert len(_names("bk_jobs")) == 50
    assert (targets.media_root("bk_jobs") / "contacts" / "card.txt").read_text() == "hello"

    body_in = {"backup": str(backup.pk), "as": "bk_copy"}
    status, body = api.call("POST", "/api/v1/apps/bk_jobs/restore", "/apps/{name}/restore", body_in)
    assert status == 202, body
    assert _run(body["job_id"]).status == "succeeded"
    assert _names("bk_copy") == _names("bk_jobs")
    assert (targets.media_root("bk_copy") / "contacts" / "card.txt").read_text() == "hello"
    assert Application.objects.get(name="bk_copy").placements.count() == 1  # the source's environments
    status, body = api.call("POST", "/api/v1/apps/bk_jobs/restore", "/apps/{name}/restore", body_in)
    assert status == 409  # the name is taken now
    latest = {"backup": "latest", "as": "bk_copy2"}  # from its latest backup, without looking up its id
    status, body = api.call("POST", "/api/v1/apps/bk_jobs/restore", "/apps/{name}/restore", latest)
    assert status == 202, body
    assert Job.objects.get(pk=body["job_id"]).params["backup"] == str(backup.pk)


def test_bad_restore_requests_change_nothing(api, app):
    before = Job.objects.count()
    for payload, field in (
        ({"backup": "nope"}, "backup"),
        ({"backup": "00000000-0000-4000-8000-000000000000"}, "backup"),
        ({"backup": "x", "extra": 1}, "extra"),
        ({"backup": "x", "as": "Bad Name"}, "as"),
        ({"backup": "latest"}, "backup"),  # none finished yet
    ):
        status, body = api.call("POST", "/api/v1/apps/bk_jobs/restore", "/apps/{name}/restore", payload)
        assert status == 400 and field in body["errors"], body
    assert api.call("POST", "/api/v1/apps/nope/backups", "/apps/{name}/backups")[0] == 404
    assert api.call("GET", "/api/v1/apps/nope/backups", "/apps/{name}/backups")[0] == 404
    assert Job.objects.count() == before


def test_a_job_whose_queue_job_died_ends_failed(api, app, store):
    status, body = api.call("POST", "/api/v1/apps/bk_jobs/backups", "/apps/{name}/backups")
    job_id = body["job_id"]
    # The queue worker took it, began, and was killed: RQ no longer has it started.
    get_queue().remove(f"{JOB_PREFIX}{job_id}")
    from rq.job import Job as RqJob

    RqJob.fetch(f"{JOB_PREFIX}{job_id}", connection=get_queue().connection).delete()
    jobs.start_job(job_id)
    backup = Backup.objects.get(job_id=job_id)
    actions.backup_started(backup.pk, store=store.label, location=f"bk_jobs/{backup.pk}")
    (store.root / "bk_jobs" / str(backup.pk)).mkdir(parents=True)
    assert schedule.recover_interrupted() == {"failed": [job_id], "requeued": []}
    job = Job.objects.get(pk=job_id)
    assert job.status == "failed" and job.error.startswith("interrupted: its queue job is gone")
    backup.refresh_from_db()
    assert backup.status == "failed" and not (store.root / "bk_jobs" / str(backup.pk)).exists()
    assert schedule.recover_interrupted() == {"failed": [], "requeued": []}  # once


def test_the_schedule_backs_up_what_is_due_once(app):
    config = dataclasses.replace(settings.APP_CONFIG, backup_interval=3600.0, backup_drill_interval=0.0)
    with override_settings(APP_CONFIG=config):
        assert schedule.run_due() == {"backups": ["bk_jobs"], "drills": []}
        assert schedule.run_due()["backups"] == []  # its newest backup (queued) is not due yet
        (queued,) = Backup.objects.filter(app_name="bk_jobs")
        assert queued.scheduled and queued.job.kind == "backup"
        assert AuditEntry.objects.filter(action="backup_requested", via="schedule").count() == 1
        app.options = {**app.options, "backups": {"interval": 0}}  # this app: never scheduled
        app.save(update_fields=["options"])
        Backup.objects.all().delete()
        assert schedule.run_due()["backups"] == []
    get_queue().remove(f"{JOB_PREFIX}{queued.job_id}")


def test_standalone_runs_the_job_in_a_thread_of_its_own(app, store):
    """No Redis, no queue worker: the job runs in this process once the request commits."""
    from django.db import transaction

    from apps_registry.control.backups.jobs import dispatch
    from tests.support.processes import wait_until

    config = dataclasses.replace(settings.APP_CONFIG, supervisor_redis_url="", command_redis_url="")
    with override_settings(APP_CONFIG=config):
        assert not settings.APP_CONFIG.uses_redis
        with transaction.atomic():
            backup, job = actions.request_backup(app, via="api")
            dispatch(job)
        wait_until(
            lambda: Job.objects.get(pk=job.pk).status == "succeeded",
            timeout=30,
            interval=0.1,
            message="the standalone backup",
        )
    assert Backup.objects.get(pk=backup.pk).status == "succeeded"
    assert f"{JOB_PREFIX}{job.pk}" not in get_queue().get_job_ids()  # nothing went to a queue
