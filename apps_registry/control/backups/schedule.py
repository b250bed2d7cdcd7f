"""Scheduled backups, retention and restore drills, checked from the queue worker's periodic
loop (``start_queue.recovery.recover_throttled``) at most once per ``CHECK_EVERY`` across every
queue worker (a Redis ``SET NX PX`` lock), so two queue workers never schedule one twice.

- An app whose newest backup (of any outcome, a running one included) is older than its
  interval (``policy.interval_for``) gets a scheduled backup; retention runs after each one.
- An app whose newest successful backup was not drilled within ``APP_BACKUP_DRILL_INTERVAL``
  gets a restore drill, unless one is waiting or running.
- A backup job whose queue worker died ends ``failed`` (``recover_interrupted``), so it neither
  stays "running" for ever nor blocks the next drill.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db.models import Max
from django.utils import timezone

from apps_registry.control import keys, redis_client
from apps_registry.control.backups import store as stores
from apps_registry.control.backups.jobs import JOB_PREFIX, enqueue_job
from apps_registry.control.backups.policy import interval_for
from apps_registry.control.start_queue.enqueue import get_queue
from apps_registry.models import Application, Backup, BackupStatus, Job, JobKind, JobStatus
from apps_registry.registry import actions, jobs

log = logging.getLogger(__name__)

CHECK_EVERY = 30.0
OPEN = (JobStatus.QUEUED, JobStatus.RUNNING)


def check_every() -> float:
    """Seconds between checks: ``CHECK_EVERY``, or the shortest configured interval if shorter."""
    config = settings.APP_CONFIG
    intervals = [i for i in (config.backup_interval, config.backup_drill_interval) if i > 0]
    return max(1.0, min([CHECK_EVERY, *intervals]))


def run_throttled() -> None:
    if not redis_client.commands().set(keys.backup_schedule_lock(), "1", nx=True, px=int(check_every() * 1000)):
        return
    try:
        run_due()
    except Exception:
        log.exception("backup schedule check failed")


KINDS = (JobKind.BACKUP, JobKind.RESTORE, JobKind.CLONE, JobKind.DRILL)
# A queued job whose RQ job is missing this long after it was made lost it (Redis lost its data,
# or the supervisor died between commit and enqueue): it is queued again.
REQUEUE_AFTER = dt.timedelta(seconds=60)
ALIVE = ("queued", "started", "deferred", "scheduled")


def _rq_status(job_id: str) -> str | None:
    from rq.exceptions import NoSuchJobError
    from rq.job import Job as RqJob

    try:
        return RqJob.fetch(f"{JOB_PREFIX}{job_id}", connection=get_queue().connection).get_status(refresh=True)
    except NoSuchJobError:
        return None


def recover_interrupted(now: dt.datetime | None = None) -> dict[str, list[str]]:
    """Backup, restore, clone and drill jobs whose queue job died (its queue worker killed, RQ
    marked it failed or lost it) end ``failed`` saying so, and a backup they were making is failed
    and its parts deleted; queued ones whose queue job is missing are queued again."""
    now = now or timezone.now()
    result: dict[str, list[str]] = {"failed": [], "requeued": []}
    for job in Job.objects.filter(kind__in=KINDS, status__in=OPEN).select_related("application"):
        status = _rq_status(str(job.pk))
        if status in ALIVE:
            continue
        if job.status == JobStatus.QUEUED:
            if status is None and job.created_at < now - REQUEUE_AFTER:
                enqueue_job(job)
                result["requeued"].append(str(job.pk))
            continue
        error = f"interrupted: its queue job is {status or 'gone'} (the queue worker stopped before it finished)"
        if job.kind == JobKind.RESTORE:
            error += "; the app may be stopped with part of the backup restored: restore again, then check it runs"
        interrupt(job, error)
        result["failed"].append(str(job.pk))
    # A backup whose job ended without it (cancelled while queued) is failed, not "queued" for ever.
    for backup in Backup.objects.filter(status__in=(BackupStatus.QUEUED, BackupStatus.RUNNING)).exclude(
        job__status__in=OPEN
    ):
        actions.backup_failed(backup.pk, f"its job ended ({backup.job.status if backup.job else 'gone'}) before it")
    return result


def interrupt(job: Job, error: str) -> None:
    if job.kind == JobKind.BACKUP and job.params.get("backup"):
        backup = Backup.objects.filter(pk=job.params["backup"]).first()
        if backup is not None and backup.status in (BackupStatus.QUEUED, BackupStatus.RUNNING):
            actions.backup_failed(backup.pk, error)
            if backup.location:
                stores.configured().delete_prefix(backup.location)
    jobs.finish_job(job.pk, error=error)


def run_due(now: dt.datetime | None = None) -> dict[str, list[str]]:
    """Queue the backups and drills that are due; ``{"backups": [app…], "drills": [app…]}``.
    Interrupted jobs are dealt with first (``recover_interrupted``)."""
    now = now or timezone.now()
    recover_interrupted(now)
    newest = dict(Backup.objects.values_list("app_name").annotate(at=Max("created_at")))
    due = []
    for app in Application.objects.all():
        interval = interval_for(app)
        if interval <= 0:
            continue
        last = newest.get(app.name)
        if last is None or last <= now - dt.timedelta(seconds=interval):
            backup, job = actions.request_backup(app, scheduled=True, via="schedule")
            enqueue_job(job)
            due.append(app.name)
    return {"backups": due, "drills": _drills_due(now)}


def latest_successful() -> dict[str, Backup]:
    """Each app's newest successful backup."""
    latest: dict[str, Backup] = {}
    for backup in Backup.objects.filter(status=BackupStatus.SUCCEEDED).order_by("app_name", "-created_at"):
        latest.setdefault(backup.app_name, backup)
    return latest


def _drills_due(now: dt.datetime) -> list[str]:
    every = settings.APP_CONFIG.backup_drill_interval
    if every <= 0:
        return []
    drilling = set(Job.objects.filter(kind=JobKind.DRILL, status__in=OPEN).values_list("params__backup", flat=True))
    due = []
    for name, backup in latest_successful().items():
        if str(backup.pk) in drilling:
            continue
        if backup.drilled_at is None or backup.drilled_at <= now - dt.timedelta(seconds=every):
            enqueue_job(actions.request_drill(backup, via="schedule"))
            due.append(name)
    return due
