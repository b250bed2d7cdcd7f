"""Named state changes of the registry. Each one writes the audit trail.

The admin, the API, the start queue and the worker-event ingester call these functions;
nothing else changes an application's or environment's status. Where two processes may
race (a worker's status report against an operator's request), updates are guarded:
``filter(pk=..., <expected state>).update(...)``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence

from django.contrib.auth.models import AbstractBaseUser
from django.db import models, transaction
from django.utils import timezone

from apps_registry.models import AppEnvironment, Application, AppStatus, AuditEntry, Environment
from apps_registry.registry import outbox

# Statuses from which a start may be requested: anything that is not already on its way up.
STARTABLE = (AppStatus.STOPPED, AppStatus.ERROR, AppStatus.STOPPING)
ACTIVE = (AppStatus.QUEUED, AppStatus.STARTING, AppStatus.RUNNING)


def _user(user: AbstractBaseUser | None) -> AbstractBaseUser | None:
    return user if user is not None and user.is_authenticated else None


def audit(
    action: str,
    *,
    user: AbstractBaseUser | None = None,
    app_name: str = "",
    environments: Iterable[str] = (),
    result: str = AuditEntry.Result.OK,
    error: str = "",
    request_id: str = "",
    via: str = "admin",
) -> AuditEntry:
    return AuditEntry.objects.create(
        user=_user(user),
        app_name=app_name,
        action=action,
        environments=sorted(environments),
        result=result,
        error=error,
        request_id=request_id,
        via=via,
    )


def new_request_id() -> str:
    return str(uuid.uuid4())


def _bump_generation(app: Application) -> int:
    """Take the app's row lock and bump its generation: requests for one app are serialised
    and numbered, so a command or queued start that carries an older number is stale."""
    locked = Application.objects.select_for_update().only("pk", "generation").get(pk=app.pk)
    generation = locked.generation + 1
    Application.objects.filter(pk=app.pk).update(generation=generation)
    app.generation = generation
    return generation


def _placements(app: Application, environments: Sequence[str] | None) -> list[AppEnvironment]:
    placements = AppEnvironment.objects.filter(application=app).select_related("environment")
    if environments is not None:
        placements = placements.filter(environment__name__in=list(environments))
    return sorted(placements, key=lambda p: p.environment.name)


# --- Applications -------------------------------------------------------------------------


@transaction.atomic
def create_application(
    *,
    name: str,
    environments: Sequence[Environment],
    user: AbstractBaseUser | None = None,
    display_name: str = "",
    description: str = "",
    options: dict | None = None,
    via: str = "admin",
) -> Application:
    app = Application(
        name=name,
        display_name=display_name or name,
        description=description,
        options=options or {},
        created_by=_user(user),
        updated_by=_user(user),
    )
    app.full_clean()
    app.save()
    AppEnvironment.objects.bulk_create(AppEnvironment(application=app, environment=env) for env in environments)
    audit("create", user=user, app_name=name, environments=[e.name for e in environments], via=via)
    outbox.publish_app(app)
    return app


@transaction.atomic
def set_application_environments(
    app: Application, environments: Sequence[Environment], user: AbstractBaseUser | None = None, via: str = "admin"
) -> None:
    """Place the app on exactly these environments; removed ones get a remove command."""
    wanted = {env.pk: env for env in environments}
    current = {p.environment_id: p for p in _placements(app, None)}
    added = [env for pk, env in wanted.items() if pk not in current]
    removed = [p for pk, p in current.items() if pk not in wanted]
    AppEnvironment.objects.bulk_create(AppEnvironment(application=app, environment=env) for env in added)
    if removed:
        request_remove(app, user, environments=[p.environment.name for p in removed], via=via)
        AppEnvironment.objects.filter(pk__in=[p.pk for p in removed]).delete()
    if added or removed:
        audit(
            "set_environments",
            user=user,
            app_name=app.name,
            environments=[env.name for env in environments],
            via=via,
        )
    outbox.publish_app(app)


@transaction.atomic
def update_application(app: Application, user: AbstractBaseUser | None = None, via: str = "admin") -> None:
    """Save edited descriptive fields (display name, description, options)."""
    app.updated_by = _user(user)
    app.full_clean()
    Application.objects.filter(pk=app.pk).update(
        display_name=app.display_name,
        description=app.description,
        options=app.options,
        updated_by=app.updated_by,
        updated_at=timezone.now(),
    )
    audit("update", user=user, app_name=app.name, via=via)
    outbox.publish_app(app)


@transaction.atomic
def delete_application(
    app: Application, user: AbstractBaseUser | None = None, *, drop_data: bool = False, via: str = "admin"
) -> str:
    """Remove the app from every environment, then from the registry."""
    outbox.require_channel("delete", app.name)
    envs = [p.environment.name for p in _placements(app, None)]
    request_id = new_request_id()
    generation = _bump_generation(app)
    if envs:
        outbox.send_remove(app, envs, generation=generation, request_id=request_id, drop_data=drop_data)
    audit(
        "delete_with_data" if drop_data else "delete",
        user=user,
        app_name=app.name,
        environments=envs,
        request_id=request_id,
        via=via,
    )
    name = app.name
    app.delete()
    outbox.unpublish_app(name)
    return request_id


# --- Start, stop, restart, remove ---------------------------------------------------------


@transaction.atomic
def request_start(
    app: Application,
    user: AbstractBaseUser | None = None,
    *,
    environments: Sequence[str] | None = None,
    via: str = "admin",
) -> str:
    """Queue a start of the app on its environments (one after another, see dispatch)."""
    request_id = new_request_id()
    generation = _bump_generation(app)
    placements = _placements(app, environments)
    now = timezone.now()
    ids = [p.pk for p in placements]
    AppEnvironment.objects.filter(pk__in=ids, status__in=STARTABLE).update(
        status=AppStatus.QUEUED, error="", status_changed_at=now, queued_at=now
    )
    names = [p.environment.name for p in placements]
    # desired_running is set per environment by the start job as it reaches each one, so a
    # worker's reconciliation never starts the app ahead of the queue.
    audit("start", user=user, app_name=app.name, environments=names, result="pending", request_id=request_id, via=via)
    outbox.send_start(app, names, generation=generation, request_id=request_id)
    return request_id


@transaction.atomic
def request_stop(
    app: Application,
    user: AbstractBaseUser | None = None,
    *,
    environments: Sequence[str] | None = None,
    via: str = "admin",
) -> str:
    request_id = new_request_id()
    generation = _bump_generation(app)
    placements = _placements(app, environments)
    ids = [p.pk for p in placements]
    now = timezone.now()
    # One UPDATE (this is the command round trip's hot path): a queued start that has not
    # begun is simply withdrawn, a starting or running app is on its way down.
    moving = (AppStatus.QUEUED, AppStatus.STARTING, AppStatus.RUNNING)
    AppEnvironment.objects.filter(pk__in=ids).update(
        status=models.Case(
            models.When(status=AppStatus.QUEUED, then=models.Value(AppStatus.STOPPED)),
            models.When(status__in=moving, then=models.Value(AppStatus.STOPPING)),
            default=models.F("status"),
        ),
        status_changed_at=models.Case(
            models.When(status__in=moving, then=models.Value(now)), default=models.F("status_changed_at")
        ),
        queued_at=models.Case(models.When(status__in=moving, then=models.Value(None)), default=models.F("queued_at")),
        desired_running=False,
    )
    names = [p.environment.name for p in placements]
    audit("stop", user=user, app_name=app.name, environments=names, result="pending", request_id=request_id, via=via)
    outbox.publish_app(app)
    outbox.send_stop(app, names, generation=generation, request_id=request_id)
    return request_id


@transaction.atomic
def request_restart(
    app: Application,
    user: AbstractBaseUser | None = None,
    *,
    environments: Sequence[str] | None = None,
    via: str = "admin",
) -> str:
    request_id = new_request_id()
    generation = _bump_generation(app)
    placements = _placements(app, environments)
    ids = [p.pk for p in placements]
    AppEnvironment.objects.filter(pk__in=ids).update(desired_running=True)
    names = [p.environment.name for p in placements]
    audit("restart", user=user, app_name=app.name, environments=names, result="pending", request_id=request_id, via=via)
    outbox.publish_app(app)
    outbox.send_restart(app, names, generation=generation, request_id=request_id)
    return request_id


@transaction.atomic
def request_remove(
    app: Application,
    user: AbstractBaseUser | None = None,
    *,
    environments: Sequence[str] | None = None,
    drop_data: bool = False,
    via: str = "admin",
) -> str:
    """Stop the app on these environments and unload it there (data kept unless drop_data)."""
    request_id = new_request_id()
    generation = _bump_generation(app)
    placements = _placements(app, environments)
    ids = [p.pk for p in placements]
    AppEnvironment.objects.filter(pk__in=ids).exclude(status=AppStatus.STOPPED).update(
        status=AppStatus.STOPPING, status_changed_at=timezone.now(), queued_at=None
    )
    AppEnvironment.objects.filter(pk__in=ids).update(desired_running=False)
    names = [p.environment.name for p in placements]
    audit(
        "remove_with_data" if drop_data else "remove",
        user=user,
        app_name=app.name,
        environments=names,
        result="pending",
        request_id=request_id,
        via=via,
    )
    outbox.publish_app(app)
    outbox.send_remove(app, names, generation=generation, request_id=request_id, drop_data=drop_data)
    return request_id


# --- Reports from workers ------------------------------------------------------------------


def record_app_status(
    app_name: str, environment_name: str, status: str, *, error: str = "", at: dt.datetime | None = None
) -> bool:
    """Apply a worker's status report. Reports older than the current status are ignored,
    so reports applied out of order (several ingesters) cannot move a status backwards."""
    # The guard must be on the updated table itself, not behind a join: Django turns a join
    # filter into ``id IN (SELECT …)``, and PostgreSQL re-checks only the outer condition on a
    # row another ingester changed meanwhile, so an older report could overwrite a newer one.
    return bool(record_app_statuses([(app_name, environment_name, status, error, at or timezone.now())]))


# Rows per bulk UPDATE: keeps statements (and SQLite's parameter count) bounded.
BULK_CHUNK = 200


def _per_row(values: dict[int, object], field: models.Field) -> models.Case:
    """``CASE id WHEN … THEN …``: one value per row in a single UPDATE."""
    return models.Case(
        *(models.When(pk=pk, then=models.Value(value, output_field=field)) for pk, value in values.items()),
        output_field=field,
    )


def _chunks(items: list, size: int = BULK_CHUNK) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
    ).values_list("pk", "application__name", "environment__name")
    by_pk = {pk: wanted[(app, env)] for pk, app, env in rows if (app, env) in wanted}
    field = AppEnvironment._meta.get_field
    updated = 0
    for chunk in _chunks(sorted(by_pk)):
        at = _per_row({pk: by_pk[pk][2] for pk in chunk}, field("status_changed_at"))
        updated += AppEnvironment.objects.filter(pk__in=chunk, status_changed_at__lte=at).update(
            status=_per_row({pk: by_pk[pk][0] for pk in chunk}, field("status")),
            error=_per_row({pk: by_pk[pk][1] for pk in chunk}, field("error")),
            status_changed_at=at,
            queued_at=None,
        )
    return updated


def close_undelivered_request(request_id: str, *, error: str) -> None:
    """Its commands could not go out (Redis unavailable after commit): the request's audit
    entry says so, whether it was pending or, like a delete, recorded ``ok`` up front."""
    AuditEntry.objects.filter(request_id=request_id).update(result=AuditEntry.Result.ERROR, error=error)


def finish_request(request_id: str, *, error: str = "") -> None:
    """Close the audit entry of a request once its outcome is known."""
    AuditEntry.objects.filter(request_id=request_id, result=AuditEntry.Result.PENDING).update(
        result=AuditEntry.Result.ERROR if error else AuditEntry.Result.OK, error=error
    )


# --- Environments ---------------------------------------------------------------------------


def register_environment(
    *,
    name: str,
    url: str,
    proxy_url: str = "",
    version: str = "",
    host: str = "",
    pid: int | None = None,
    apps_running: Sequence[str] = (),
    at: dt.datetime | None = None,
) -> Environment:
    """A worker announced itself (start-up or heartbeat): create or refresh its record."""
    at = at or timezone.now()
    fields = {
        "url": url,
        "proxy_url": proxy_url,
        "version": version,
        "host": host,
        "pid": pid,
        "apps_running": sorted(apps_running),
        "last_heartbeat": at,
        "stopped_at": None,
    }
    env, created = Environment.objects.get_or_create(name=name, defaults={**fields, "first_seen": at})
    if created:
        audit("environment_registered", app_name="", environments=[name], via="worker")
    else:
        Environment.objects.filter(pk=env.pk).update(**fields)
        for key, value in fields.items():
            setattr(env, key, value)
    outbox.publish_environment(env)
    return env


# A heartbeat that changes nothing but ``last_heartbeat``, by less than this, is not written:
# liveness reads the lease in Redis, the database's beat is only its fallback.
HEARTBEAT_RESOLUTION = dt.timedelta(seconds=1)
_DESCRIPTIVE = ("url", "proxy_url", "version", "host", "pid", "apps_running")


def refresh_environments(reports: Sequence[dict]) -> int:
    """Apply many workers' registrations and heartbeats at once, at most one per environment
    (the newest). Each report holds ``register_environment``'s keyword arguments plus
    ``announce`` (True for a ``register`` event: the agent started or Redis came back).

    One read of the environments, then: a beat that only moves ``last_heartbeat`` forward is
    written for every such environment in one guarded UPDATE (never moved backwards by an
    older report applied late) and skipped if it moves it by less than HEARTBEAT_RESOLUTION;
    a new environment, a changed description or an announcement goes through
    ``register_environment`` (audit, cache publish); a report older than a deregistration
    already recorded is ignored. Returns how many environments were written."""
    latest: dict[str, dict] = {}
    for report in reports:
        latest[report["name"]] = report
    if not latest:
        return 0
    existing = {env.name: env for env in Environment.objects.filter(name__in=list(latest))}
    beats: dict[int, dt.datetime] = {}
    written = 0
    for name, report in latest.items():
        fields = {key: value for key, value in report.items() if key != "announce"}
        fields["apps_running"] = sorted(fields.get("apps_running") or ())
        at = fields["at"]
        env = existing.get(name)
        if env is not None and env.stopped_at is not None and env.stopped_at > at:
            continue  # a later deregistration is recorded: this beat must not bring it back
        unchanged = (
            env is not None
            and env.stopped_at is None
            and not report.get("announce")
            and all(getattr(env, key) == fields[key] for key in _DESCRIPTIVE)
        )
        if not unchanged:
            register_environment(**fields)
            written += 1
        elif env.last_heartbeat is None or at - env.last_heartbeat >= HEARTBEAT_RESOLUTION:
            beats[env.pk] = at
    field = Environment._meta.get_field("last_heartbeat")
    for chunk in _chunks(sorted(beats)):
        at = _per_row({pk: beats[pk] for pk in chunk}, field)
        written += (
            Environment.objects.filter(pk__in=chunk)
            .filter(models.Q(last_heartbeat__isnull=True) | models.Q(last_heartbeat__lt=at))
            .update(last_heartbeat=at)
        )
    return written


def deregister_environment(name: str, *, at: dt.datetime | None = None) -> bool:
    """The worker's agent stopped cleanly (SIGTERM)."""
    updated = Environment.objects.filter(name=name).update(stopped_at=at or timezone.now())
    if updated:
        audit("environment_stopped", environments=[name], via="worker")
    return bool(updated)


def set_environment_enabled(env: Environment, enabled: bool, user: AbstractBaseUser | None = None) -> None:
    Environment.objects.filter(pk=env.pk).update(enabled=enabled)
    env.enabled = enabled
    audit("environment_enabled" if enabled else "environment_disabled", user=user, environments=[env.name])
    outbox.publish_environment(env)


@transaction.atomic
def forget_environment(env: Environment, user: AbstractBaseUser | None = None) -> None:
    """Drop an environment from the registry (it registers again if its agent comes back)."""
    name = env.name
    env.delete()
    audit("environment_forgotten", user=user, environments=[name])
    outbox.unpublish_environment(name)


# --- The start queue ------------------------------------------------------------------------

START_INTERRUPTED = "start interrupted"


def begin_environment_start(app_name: str, environment_name: str, *, generation: int) -> str:
    """The start job reached this environment. Under the app's row lock (the one every request
    takes to bump the generation) it checks that no later request came in, then marks the
    placement ``starting`` and wanted running. Returns ``starting``, ``running`` (already up:
    nothing to send), ``superseded`` or ``gone`` (app or placement deleted)."""
    with transaction.atomic():
        app = Application.objects.select_for_update().filter(name=app_name).first()
        if app is None:
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
            close_start_request(request_id, error=START_INTERRUPTED)
        pending = AuditEntry.objects.filter(app_name=app_name, action="start", result=AuditEntry.Result.PENDING)
        for request_id in pending.values_list("request_id", flat=True):
            finish_request(request_id, error=START_INTERRUPTED)
        audit(
            "start_interrupted",
            app_name=app_name,
            environments=environment_names,
            result=AuditEntry.Result.ERROR,
            error=START_INTERRUPTED,
            via="queue",
        )
    return updated


def close_start_request(request_id: str, *, error: str = "") -> None:
    """The start job's verdict on its request, once it has seen every environment settle. It
    overrides an earlier close by one environment's acknowledgement (which sees only itself)."""
    AuditEntry.objects.filter(request_id=request_id, action="start").update(
        result=AuditEntry.Result.ERROR if error else AuditEntry.Result.OK, error=error
    )


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
