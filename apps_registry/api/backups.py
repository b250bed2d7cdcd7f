"""``/apps/<name>/backups`` and ``/apps/<name>/restore``: take a backup of an app, list its
backups, restore one into the app itself (stop, restore, start) or into a new app (``"as"``: a
clone). Each change is a tracked job answered ``202 {"job_id"}`` (follow it at ``/jobs/<id>``),
requested through ``apps_registry.registry.actions`` (audited, ``via="api"``)."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from ninja import Router, Status
from ninja.params.functions import Path

from apps_registry.api.apps import AppPath, _get_app
from apps_registry.api.auth import PermissionMissing, TokenAuth
from apps_registry.api.body import JsonBody
from apps_registry.api.errors import ApiError
from apps_registry.api.responses import documented
from apps_registry.api.schemas import BackupList, JobAccepted, RestoreIn
from apps_registry.control.backups.jobs import dispatch
from apps_registry.models import Application, Backup, BackupStatus, Environment
from apps_registry.registry import actions, outbox

router = Router()


# Instead of an id: the newest finished backup (a clone "from its latest backup").
LATEST = "latest"


def backup_json(backup: Backup) -> dict[str, Any]:
    return {
        "id": str(backup.pk),
        "created_at": backup.created_at.isoformat(),
        "size": backup.size,
        "checksum": backup.checksum,
        "status": backup.status,
        "verified_at": backup.verified_at.isoformat() if backup.verified_at else None,
    }


@router.post(
    "/apps/{name}/backups",
    auth=TokenAuth("apps_registry.add_backup"),
    summary="Back up the application now (its database and uploaded files)",
    description="Queues a backup job; follow it at /jobs/{job_id}. Needs apps_registry.add_backup.",
    **documented(202, JobAccepted, "Accepted: the backup job", 404, 503),
)
def create_backup(request: HttpRequest, name: AppPath = Path(..., example="sales_eu")) -> Status[dict[str, Any]]:
    app = _get_app(name)
    outbox.require_channel("backup", app.name)
    with transaction.atomic():
        _backup, job = actions.request_backup(app, user=request.auth, via="api")
        dispatch(job)
    return Status(202, {"job_id": str(job.pk)})


@router.get(
    "/apps/{name}/backups",
    auth=TokenAuth("apps_registry.view_backup"),
    summary="The application's backups, newest first",
    **documented(200, BackupList, "Backups", 404),
)
def list_backups(request: HttpRequest, name: AppPath = Path(..., example="sales_eu")) -> dict[str, Any]:
    app = _get_app(name)
    return {"backups": [backup_json(b) for b in Backup.objects.filter(app_name=app.name).order_by("-created_at")]}


def _backup_of(app: Application, backup_id: str) -> Backup:
    if backup_id == LATEST:
        newest = Backup.objects.filter(app_name=app.name, status=BackupStatus.SUCCEEDED).order_by("-created_at").first()
        if newest is None:
            raise ApiError(400, errors={"backup": [f"{app.name} has no finished backup yet"]})
        return newest
    try:
        key = uuid.UUID(backup_id)
    except ValueError:
        key = None
    backup = Backup.objects.filter(pk=key, app_name=app.name).first() if key else None
    if backup is None:
        raise ApiError(400, errors={"backup": [f"no backup {backup_id[:60]!r} of {app.name}"]})
    if backup.status != BackupStatus.SUCCEEDED:
        raise ApiError(400, errors={"backup": [f"backup {backup.pk} is {backup.status}: only a finished one restores"]})
    return backup


def _clone(request: HttpRequest, source: Application, backup: Backup, payload: RestoreIn) -> Application:
    user = request.auth
    if not user.has_perm("apps_registry.add_application"):
        raise PermissionMissing("permission denied: a clone needs apps_registry.add_application")
    wanted = payload.environments or sorted(p.environment.name for p in source.placements.all())
    found = {env.name: env for env in Environment.objects.filter(name__in=wanted)}
    unknown = [name for name in wanted if name not in found]
    if unknown:
        raise ApiError(400, errors={"environments": [f"unknown environment {n[:60]!r}" for n in unknown]})
    if Application.objects.filter(name=payload.as_).exists():
        raise ApiError(409, f"an application named {payload.as_!r} already exists")
    # The source's modules, start mode and first admin; never its explicit database (the clone
    # gets its own, by the naming rule) nor its domain.
    options = {k: v for k, v in (source.options or {}).items() if k != "database"}
    try:
        return actions.create_application(
            name=payload.as_,
            environments=[found[name] for name in wanted],
            user=user,
            display_name=f"{source.display_name or source.name} (clone)",
            description=f"Cloned from {source.name}, backup {backup.pk}",
            options=options,
            via="api",
        )
    except (IntegrityError, ValidationError):
        raise ApiError(409, f"an application named {payload.as_!r} already exists") from None


@router.post(
    "/apps/{name}/restore",
    auth=TokenAuth("apps_registry.restore_backup"),
    summary="Restore a backup into the application (stop, restore, start) or into a new one",
    description=(
        'With "as": a new application of that name (a clone, on "environments" or the source\'s) gets the '
        "backup's data and starts; needs apps_registry.add_application too. Without: the app is stopped where "
        "it runs, its database and files replaced by the backup's, and started again through the start queue. "
        "Needs apps_registry.restore_backup."
    ),
    **documented(202, JobAccepted, "Accepted: the restore (or clone) job", 404, 409, 413, 503),
)
def restore_backup(
    request: HttpRequest, name: AppPath = Path(..., example="sales_eu"), payload: RestoreIn = JsonBody(...)
) -> Status[dict[str, Any]]:
    app = _get_app(name)
    backup = _backup_of(app, payload.backup)
    outbox.require_channel("restore", app.name)
    with transaction.atomic():
        if payload.as_:
            clone = _clone(request, app, backup, payload)
            job = actions.request_clone(backup, clone, user=request.auth, via="api")
        else:
            if payload.environments is not None:
                raise ApiError(400, errors={"environments": ['only with "as": a restore keeps the app where it is']})
            job = actions.request_restore(app, backup, user=request.auth, via="api")
        dispatch(job)
    return Status(202, {"job_id": str(job.pk)})
