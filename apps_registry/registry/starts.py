"""The start queue's state changes: a job reaching an environment, a job that died, a start
enqueued again."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from django.db import transaction
from django.utils import timezone

from apps_registry.models import AppEnvironment, Application, AppStatus, AuditEntry
from apps_registry.registry import outbox
from apps_registry.registry.requests import audit, close_request, new_request_id

START_INTERRUPTED = "start interrupted"


def begin_environment_start(app_name: str, environment_name: str, *, generation: int, incarnation: str = "") -> str:
    """The start job reached this environment. Under the app's row lock (the one every request
    takes to bump the generation) it checks that no later request came in, then marks the
    placement ``starting`` and wanted running. Returns ``starting``, ``running`` (already up:
    nothing to send), ``superseded`` or ``gone`` (app or placement deleted)."""
    with transaction.atomic():
        app = Application.objects.select_for_update().filter(name=app_name).first()
        if app is None or (incarnation and str(app.incarnation) != incarnation):
            return "gone"
        if app.generation != generation:
            return "superseded"
        placement = AppEnvironment.objects.filter(application=app, environment__name=environment_name).first()
        if placement is None:
            return "gone"
        if placement.status == AppStatus.RUNNING:
            AppEnvironment.objects.filter(pk=placement.pk).update(desired_running=True)
            outcome = "running"
        else:
            AppEnvironment.objects.filter(pk=placement.pk).update(
                status=AppStatus.STARTING,
                desired_running=True,
                error="",
                status_changed_at=timezone.now(),
                queued_at=None,
            )
            outcome = "starting"
        outbox.publish_app(app)
    return outcome


def interrupt_starts(
    app_name: str, environment_names: Sequence[str], *, before: dt.datetime, request_id: str = ""
) -> int:
    """A start job died (queue worker killed) without finishing: mark what it left queued or
    starting as ``error`` so an operator sees it and can retry, and close its audit entries
    (the request's own, even if one environment's acknowledgement closed it ``ok`` already)."""
    placement_ids = list(
        AppEnvironment.objects.filter(
            application__name=app_name, environment__name__in=list(environment_names)
        ).values_list("pk", flat=True)
    )
    # The guard is on the rows themselves (not inside a joined subquery), so PostgreSQL checks
    # it again after waiting for a row a worker's report is updating: a start that just
    # reached ``running`` is not overwritten with "interrupted".
    updated = AppEnvironment.objects.filter(
        pk__in=placement_ids,
        status__in=(AppStatus.QUEUED, AppStatus.STARTING),
        status_changed_at__lt=before,
    ).update(status=AppStatus.ERROR, error=START_INTERRUPTED, status_changed_at=timezone.now(), queued_at=None)
    if updated:
        if request_id:
            close_request(request_id, error=START_INTERRUPTED, override=True)
        pending = AuditEntry.objects.filter(app_name=app_name, action="start", result=AuditEntry.Result.PENDING)
        for request_id in pending.values_list("request_id", flat=True):
            close_request(request_id, error=START_INTERRUPTED)
        audit(
            "start_interrupted",
            app_name=app_name,
            environments=environment_names,
            result=AuditEntry.Result.ERROR,
            error=START_INTERRUPTED,
            via="queue",
        )
    return updated


def resume_start_request(app_name: str, environment_names: Sequence[str]) -> str:
    """A start request's job was lost before it reached the queue: it is enqueued again under
    the same request id (or a new one if its audit entry is already closed). Audited."""
    pending = (
        AuditEntry.objects.filter(app_name=app_name, action="start", result=AuditEntry.Result.PENDING)
        .order_by("-at", "-id")
        .values_list("request_id", flat=True)
        .first()
    )
    if pending:
        audit("start_resumed", app_name=app_name, environments=environment_names, via="queue")
        return pending
    # Its entry was closed already: record the new attempt as a start of its own.
    request_id = new_request_id()
    audit(
        "start",
        app_name=app_name,
        environments=environment_names,
        result=AuditEntry.Result.PENDING,
        request_id=request_id,
        via="queue",
    )
    return request_id
