"""The queue worker's backup jobs: backup, restore (into the app itself), clone (into a new
app) and restore drill, each a tracked ``Job`` whose steps ``registry.jobs`` records.

They run on the start queue (``app_starts``), in the queue worker process: a start waits
behind a long dump, which is the price of one worker process the operator already runs; a
restore's own start goes through the same queue after it."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connections, transaction

from apps_registry.control import ingest
from apps_registry.control.backups import engine, targets
from apps_registry.control.backups import store as stores
from apps_registry.control.backups.engine import BackupError
from apps_registry.control.backups.policy import keep_for
from apps_registry.control.start_queue.enqueue import get_queue
from apps_registry.models import AppEnvironment, Application, AppStatus, Backup, Job, JobKind
from apps_registry.registry import actions, jobs
from supervisor_site import private_files

log = logging.getLogger(__name__)

JOB_FUNCTION = "apps_registry.control.backups.jobs.run_job"
JOB_PREFIX = "backup-job-"
STOP_POLL = 0.2


class Cancelled(Exception):
    pass


def dispatch(job: Job) -> None:
    """Run the job once the surrounding transaction commits: on the queue (supervisor), or in a
    thread of this process (standalone: no Redis, no queue worker)."""
    if settings.APP_CONFIG.uses_redis:
        enqueue_job(job)
    else:
        transaction.on_commit(
            lambda: threading.Thread(
                target=_run_in_thread, args=(str(job.pk),), name=f"{job.kind}-job", daemon=True
            ).start()
        )


def _run_in_thread(job_id: str) -> None:
    try:
        run_job(job_id)
    finally:
        connections.close_all()  # this thread's own connections, which nothing else would close


def enqueue_job(job: Job) -> None:
    """Put the job on the queue (after the surrounding transaction commits: django-rq's
    ``on_db_commit``)."""
    get_queue().enqueue(
        JOB_FUNCTION,
        str(job.pk),
        job_id=f"{JOB_PREFIX}{job.pk}",
        job_timeout=int(engine.TOOL_TIMEOUT),
        result_ttl=600,
        failure_ttl=7 * 24 * 3600,
        description=f"{job.kind} {job.app_name}",
    )


def prefix_of(backup: Backup) -> str:
    return backup.location or f"{backup.app_name}/{backup.pk}"


@contextlib.contextmanager
def _step(job_id: Any, name: str) -> Iterator[None]:
    if jobs.cancel_requested(job_id):
        raise Cancelled(f"cancelled before {name}")
    jobs.start_step(job_id, name)
    try:
        yield
    except Exception as error:
        jobs.fail_step(job_id, name, str(error) or type(error).__name__)
        raise
    jobs.finish_step(job_id, name)


def _skip(job_id: Any, name: str) -> None:
    jobs.start_step(job_id, name)
    jobs.finish_step(job_id, name, status="skipped")


# --- backup ------------------------------------------------------------------------------------


def _backup(job: Job) -> None:
    backup = Backup.objects.get(pk=job.params["backup"])
    app = job.application
    store = None
    prefix = f"{backup.app_name}/{backup.pk}"
    try:
        if app is None:
            raise BackupError("the app was deleted before its backup ran")
        store = stores.configured()
        actions.backup_started(backup.pk, store=store.label, location=prefix)
        with _step(job.pk, "dump"):
            result = engine.dump(
                targets.app_database(app.name, app.options), targets.media_root(app.name), store, prefix, app=app.name
            )
        with _step(job.pk, "verify"):
            engine.verify(store, prefix, result.checksum)
    except BaseException as error:
        # Whatever stopped it (a cancel too), the row says failed and no half backup stays.
        actions.backup_failed(backup.pk, str(error) or type(error).__name__)
        if store is not None:
            store.delete_prefix(prefix)
        raise
    actions.backup_succeeded(
        backup.pk,
        vendor=result.manifest["vendor"],
        size=result.size,
        checksum=result.checksum,
        duration=result.duration,
        manifest=result.manifest,
    )
    prune(app)


def prune(app: Application) -> int:
    """Keep the app's newest backups (its policy's count); the others leave the store too."""
    pruned = actions.prune_backups(app.name, keep_for(app))
    store = stores.configured()
    for backup in pruned:
        if backup.location:
            store.delete_prefix(backup.location)
    return len(pruned)


# --- restore, clone ----------------------------------------------------------------------------


def _wait_stopped(job_id: Any, app: Application, environments: list[str]) -> None:
    """Until the app is down on ``environments`` (statuses from the workers' events)."""
    deadline = time.monotonic() + settings.APP_CONFIG.start_timeout
    while True:
        ingest.ingest()
        waiting = (
            AppEnvironment.objects.filter(application=app, environment__name__in=environments)
            .exclude(status__in=(AppStatus.STOPPED, AppStatus.ERROR))
            .values_list("environment__name", flat=True)
        )
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise BackupError(f"the app did not stop on {', '.join(sorted(waiting))}")
        jobs.heartbeat(job_id)
        time.sleep(STOP_POLL)


def _running_on(app: Application) -> list[str]:
    return sorted(
        AppEnvironment.objects.filter(application=app)
        .filter(status__in=(*actions.ACTIVE, AppStatus.STOPPING))
        .values_list("environment__name", flat=True)
    )


def _restore(job: Job) -> None:
    backup = Backup.objects.get(pk=job.params["backup"])
    app = job.application
    if app is None:
        raise BackupError("the app was deleted before its restore ran")
    store = stores.configured()
    with _step(job.pk, "verify"):
        engine.verify(store, prefix_of(backup), backup.checksum)
    running = _running_on(app)
    if running:
        with _step(job.pk, "stop"):
            actions.request_stop(app, environments=running, via="queue")
            _wait_stopped(job.pk, app, running)
    else:
        _skip(job.pk, "stop")
    with _step(job.pk, "restore"):
        engine.restore(
            store,
            prefix_of(backup),
            backup.checksum,
            targets.app_database(app.name, app.options),
            targets.media_root(app.name),
        )
    if running:
        with _step(job.pk, "start"):
            actions.request_start(app, environments=running, via="queue")
    else:
        _skip(job.pk, "start")


def _clone(job: Job) -> None:
    backup = Backup.objects.get(pk=job.params["backup"])
    clone = job.application
    if clone is None:
        raise BackupError("the new app was deleted before the clone ran")
    store = stores.configured()
    with _step(job.pk, "verify"):
        engine.verify(store, prefix_of(backup), backup.checksum)
    with _step(job.pk, "restore"):
        engine.restore(
            store,
            prefix_of(backup),
            backup.checksum,
            targets.app_database(clone.name, clone.options),
            targets.media_root(clone.name),
        )
    if clone.placements.exists():
        with _step(job.pk, "start"):
            actions.request_start(clone, via="queue")
    else:
        _skip(job.pk, "start")


# --- restore drill -----------------------------------------------------------------------------


def _drill(job: Job) -> None:
    backup = Backup.objects.get(pk=job.params["backup"])
    options = backup.application.options if backup.application else {}
    db = targets.app_database(backup.app_name, options)
    scratch = targets.scratch_database(db, backup.pk.hex[:12])
    media = Path(tempfile.mkdtemp(prefix="drill-", dir=private_files.private_dir(settings.APP_CONFIG.storage_dir)))
    store = stores.configured()
    current = "verify"
    try:
        with _step(job.pk, "verify"):
            manifest = engine.verify(store, prefix_of(backup), backup.checksum)
        current = "restore into scratch"
        with _step(job.pk, current):
            engine.restore(store, prefix_of(backup), backup.checksum, scratch, media / "files")
        current = "check"
        with _step(job.pk, current):
            engine.check(manifest, scratch, media / "files")
    except (BackupError, targets.DatabaseError) as error:
        actions.record_drill(backup.pk, error=f"{current}: {error}")
        raise
    finally:
        _clean_up(job.pk, scratch, media)
    actions.record_drill(backup.pk)


def _clean_up(job_id: Any, scratch: targets.AppDatabase, media: Path) -> None:
    """The scratch database and files go whatever happened (a failed drill too)."""
    with contextlib.suppress(jobs.JobDone):
        jobs.start_step(job_id, "clean up")
    error = ""
    try:
        targets.drop(scratch)
    except Exception as failure:  # logged and shown on the step; the verdict stands
        log.warning("drill clean-up of %s failed: %s", scratch.label, failure)
        error = str(failure)
    shutil.rmtree(media, ignore_errors=True)
    jobs.finish_step(job_id, "clean up", status="failed" if error else "succeeded", error=error)


RUNNERS = {JobKind.BACKUP: _backup, JobKind.RESTORE: _restore, JobKind.CLONE: _clone, JobKind.DRILL: _drill}


def run_job(job_id: str) -> str:
    """The RQ job: run one backup, restore, clone or drill job to its end; its outcome."""
    close_old_connections()
    try:
        job = Job.objects.select_related("application").get(pk=job_id)
        try:
            jobs.start_job(job_id, runner=f"{JOB_PREFIX}{job_id}")
        except jobs.JobDone:
            return "done"
        try:
            RUNNERS[job.kind](job)
        except Cancelled as error:
            jobs.cancel_job(job_id, reason=str(error))
            return "cancelled"
        except (BackupError, targets.DatabaseError, stores.StoreError, actions.BackupNotUsable) as error:
            jobs.finish_job(job_id, error=str(error))
            return "failed"
        except Exception as error:
            log.exception("%s job %s failed", job.kind, job_id)
            jobs.finish_job(job_id, error=f"{job.kind} failed: {error}")
            return "failed"
        jobs.finish_job(job_id)
        return "succeeded"
    finally:
        close_old_connections()
