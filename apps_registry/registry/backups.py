"""Backups' state changes: requested (with their tracked job), running, done or failed, proved
or disproved by a restore drill, pruned; restores and clones requested. The only way a
``Backup`` row changes; each request is audited (through ``jobs.create_job``), and so is what
an operator did not ask for (a failed drill, a prune)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from apps_registry.models import Application, Backup, BackupStatus, Job, JobKind, VerifyStatus
from apps_registry.registry import jobs
from apps_registry.registry.requests import audit

BACKUP_STEPS = ("dump", "verify")
RESTORE_STEPS = ("verify", "stop", "restore", "start")
CLONE_STEPS = ("verify", "restore", "start")
DRILL_STEPS = ("verify", "restore into scratch", "check", "clean up")


class BackupNotUsable(Exception):
    """The backup cannot be restored: it did not succeed (or belongs to another app)."""


@transaction.atomic
def request_backup(
    app: Application, *, user: AbstractBaseUser | None = None, scheduled: bool = False, via: str = "admin"
) -> tuple[Backup, Job]:
    """A queued backup of ``app`` and the job that makes it (audited ``backup_requested``)."""
    job = jobs.create_job(JobKind.BACKUP, BACKUP_STEPS, application=app, user=user, via=via)
    backup = Backup.objects.create(application=app, app_name=app.name, job=job, scheduled=scheduled)
    Job.objects.filter(pk=job.pk).update(params={"backup": str(backup.pk)})
    job.params = {"backup": str(backup.pk)}
    return backup, job


def backup_started(backup_id: Any, *, store: str, location: str) -> None:
    Backup.objects.filter(pk=backup_id).update(status=BackupStatus.RUNNING, store=store[:300], location=location)


def backup_succeeded(backup_id: Any, *, vendor: str, size: int, checksum: str, duration: float, manifest: dict) -> None:
    Backup.objects.filter(pk=backup_id).update(
        status=BackupStatus.SUCCEEDED,
        finished_at=timezone.now(),
        vendor=vendor,
        size=size,
        checksum=checksum,
        duration=duration,
        manifest=manifest,
        error="",
    )


def backup_failed(backup_id: Any, error: str) -> None:
    Backup.objects.filter(pk=backup_id).update(
        status=BackupStatus.FAILED, finished_at=timezone.now(), error=error[: jobs.MAX_ERROR]
    )


def _usable(backup: Backup) -> Backup:
    if backup.status != BackupStatus.SUCCEEDED:
        raise BackupNotUsable(f"backup {backup.pk} is {backup.status}, not a finished backup")
    return backup


@transaction.atomic
def request_restore(
    app: Application, backup: Backup, *, user: AbstractBaseUser | None = None, via: str = "admin"
) -> Job:
    """A restore of ``backup`` into ``app`` itself: stop, restore, start (audited ``restore_requested``)."""
    if backup.app_name != app.name:
        raise BackupNotUsable(f"backup {backup.pk} is of app {backup.app_name!r}, not {app.name!r}")
    _usable(backup)
    return jobs.create_job(
        JobKind.RESTORE, RESTORE_STEPS, application=app, params={"backup": str(backup.pk)}, user=user, via=via
    )


@transaction.atomic
def request_clone(
    source: Backup, clone: Application, *, user: AbstractBaseUser | None = None, via: str = "admin"
) -> Job:
    """A restore of ``source`` into the new app ``clone`` (created by the caller, not started),
    which then starts on its environments (audited ``clone_requested``)."""
    _usable(source)
    params = {"backup": str(source.pk), "from": "", "source_app": source.app_name}
    return jobs.create_job(JobKind.CLONE, CLONE_STEPS, application=clone, params=params, user=user, via=via)


@transaction.atomic
def request_drill(backup: Backup, *, via: str = "queue") -> Job:
    """A restore drill of ``backup`` into a scratch database (audited ``drill_requested``)."""
    _usable(backup)
    return jobs.create_job(
        JobKind.DRILL,
        DRILL_STEPS,
        application=backup.application,
        params={"backup": str(backup.pk)},
        via=via,
    )


@transaction.atomic
def record_drill(backup_id: Any, *, error: str = "") -> None:
    """A drill's verdict on the backup: ``verified`` now, or ``failed`` with why (audited
    ``backup_unrestorable``: nobody asked, and the operator must know)."""
    now = timezone.now()
    backup = Backup.objects.select_for_update().get(pk=backup_id)
    backup.drilled_at = now
    if error:
        backup.verify_status = VerifyStatus.FAILED
        backup.verify_error = error[: jobs.MAX_ERROR]
        audit(
            "backup_unrestorable",
            app_name=backup.app_name,
            result="error",
            error=backup.verify_error,
            request_id=str(backup.pk),
            via="queue",
        )
    else:
        backup.verify_status = VerifyStatus.VERIFIED
        backup.verified_at = now
        backup.verify_error = ""
    backup.save(update_fields=["drilled_at", "verify_status", "verified_at", "verify_error"])


@transaction.atomic
def prune_backups(app_name: str, keep: int) -> list[Backup]:
    """Take out of the registry the app's successful backups beyond its newest ``keep``, and its
    failed ones older than the oldest kept (or than a week, while fewer are kept); the caller
    deletes their parts from the store. Audited ``backups_pruned`` when any went."""
    successful = Backup.objects.filter(app_name=app_name, status=BackupStatus.SUCCEEDED).order_by("-created_at")
    kept = list(successful.values_list("pk", "created_at")[:keep])
    cutoff = kept[-1][1] if len(kept) == keep else timezone.now() - dt.timedelta(days=7)
    doomed = list(successful.exclude(pk__in=[pk for pk, _ in kept]).select_for_update())
    doomed += Backup.objects.filter(app_name=app_name, status=BackupStatus.FAILED, created_at__lt=cutoff)
    if doomed:
        Backup.objects.filter(pk__in=[b.pk for b in doomed]).delete()
        audit("backups_pruned", app_name=app_name, request_id=str(doomed[0].pk), via="queue")
    return doomed
