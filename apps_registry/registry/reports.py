"""Status reports from workers (and the standalone runner), applied in bulk and guarded so
reports applied out of order cannot move a status backwards."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from django.utils import timezone

from apps_registry.models import AppEnvironment, AppStatus
from apps_registry.registry.bulk import chunks, per_row
from apps_registry.registry.requests import note_converged


def record_app_status(
    app_name: str, environment_name: str, status: str, *, error: str = "", at: dt.datetime | None = None
) -> bool:
    """Apply a worker's status report. Reports older than the current status are ignored,
    so reports applied out of order (several ingesters) cannot move a status backwards."""
    # The guard must be on the updated table itself, not behind a join: Django turns a join
    # filter into ``id IN (SELECT …)``, and PostgreSQL re-checks only the outer condition on a
    # row another ingester changed meanwhile, so an older report could overwrite a newer one.
    return bool(record_app_statuses([(app_name, environment_name, status, error, at or timezone.now())]))


def record_app_statuses(reports: Sequence[tuple[str, str, str, str, dt.datetime]]) -> int:
    """Apply many status reports ``(app, environment, status, error, at)`` in a few queries:
    one read of the placements, one guarded UPDATE per chunk. Same rule as
    ``record_app_status``: a report older than the placement's current status is ignored.
    Pass at most one report per app × environment (the newest; older ones change nothing).
    Returns how many placements changed."""
    wanted: dict[tuple[str, str], tuple[str, str, dt.datetime]] = {}
    for app_name, environment_name, status, error, at in reports:
        if status not in AppStatus.values:
            raise ValueError(f"unknown application status {status!r}")
        wanted[(app_name, environment_name)] = (status, error if status == AppStatus.ERROR else "", at)
    if not wanted:
        return 0
    rows = AppEnvironment.objects.filter(
        application__name__in={app for app, _env in wanted}, environment__name__in={env for _app, env in wanted}
    ).values_list("pk", "application__name", "environment__name", "desired_running")
    by_pk: dict[int, tuple[str, str, dt.datetime]] = {}
    reached = []  # placements now in the state the operator wants there
    for pk, app, env, desired_running in rows:
        if (app, env) in wanted:
            by_pk[pk] = report = wanted[(app, env)]
            if report[0] == (AppStatus.RUNNING if desired_running else AppStatus.STOPPED):
                reached.append((app, env, report[0], report[2]))
    field = AppEnvironment._meta.get_field
    updated = 0
    for chunk in chunks(sorted(by_pk)):
        at = per_row({pk: by_pk[pk][2] for pk in chunk}, field("status_changed_at"))
        updated += AppEnvironment.objects.filter(pk__in=chunk, status_changed_at__lte=at).update(
            status=per_row({pk: by_pk[pk][0] for pk in chunk}, field("status")),
            error=per_row({pk: by_pk[pk][1] for pk in chunk}, field("error")),
            status_changed_at=at,
            queued_at=None,
        )
    note_converged(reached)
    return updated
