"""The state changes of a move (an app from some environments to others) and of draining an
environment. The move job (``control/lifecycle``) calls them in order:

1. ``place_move_targets`` — the targets become placements that do not serve yet
   (``serving=False``); if the app runs, a start request on them (run by the job through the
   start queue's own ``StartJob``, under the app's start lock);
2. ``switch_route`` — ONE UPDATE: the targets serve, the sources stop serving. A proxy reads
   the placements in one query, so each request sees either the old route or the new one,
   never neither;
3. ``unload_sources`` — the sources get a remove (stopped and unloaded there, data kept) and
   stop being placements.

``roll_back_move`` undoes step 1 (a move cancelled or failed before its switch). Each is
audited and takes the app's row lock, like every request on an app."""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Case, Value, When
from django.utils import timezone

from apps_registry.models import AppEnvironment, Application, AppStatus, Environment
from apps_registry.registry import outbox
from apps_registry.registry.applications import STARTABLE, _lock, _open_request, _runs, request_remove
from apps_registry.registry.requests import audit, supersede_older


class SwitchRefused(Exception):
    """The targets cannot take the route (not running there, or no longer placed)."""


def app_runs(app: Application) -> bool:
    """Meant to be up somewhere (desired running, or a start under way)."""
    return any(_runs(p) for p in AppEnvironment.objects.filter(application=app))


@transaction.atomic
def place_move_targets(
    app: Application, targets: Sequence[str], *, job_id: str, user: AbstractBaseUser | None = None, via: str = "queue"
) -> tuple[str, int]:
    """Place the app on ``targets`` without serving there; if it runs, open a start request on
    the ones where it is not up yet. Returns ``(request_id, generation)`` (``""`` when nothing
    has to start). Idempotent: a resumed move finds its placements there already."""
    locked = _lock(app)
    runs = app_runs(app)
    existing = set(
        AppEnvironment.objects.filter(application=app, environment__name__in=list(targets)).values_list(
            "environment__name", flat=True
        )
    )
    envs = Environment.objects.filter(name__in=[t for t in targets if t not in existing])
    AppEnvironment.objects.bulk_create(AppEnvironment(application=app, environment=env, serving=False) for env in envs)
    to_start = list(
        AppEnvironment.objects.filter(application=app, environment__name__in=list(targets))
        .exclude(status__in=(AppStatus.RUNNING, AppStatus.STARTING))
        .values_list("environment__name", flat=True)
    )
    if not runs or not to_start:
        outbox.publish_app(app)
        return "", locked.generation
    request = _open_request(app, sorted(to_start))
    now = timezone.now()
    AppEnvironment.objects.filter(pk__in=request.ids, status__in=STARTABLE).update(
        status=AppStatus.QUEUED, error="", status_changed_at=now, queued_at=now
    )
    supersede_older(app.name)
    audit(
        "start",
        user=user,
        app_name=app.name,
        environments=request.environments,
        result="pending",
        request_id=request.id,
        via=via,
        error=f"move job {job_id}",
    )
    outbox.publish_app(app)
    return request.id, request.generation


@transaction.atomic
def switch_route(app: Application, sources: Sequence[str], targets: Sequence[str], *, job_id: str) -> None:
    """Requests go to ``targets`` from now on: one UPDATE sets ``serving`` on both sides, so no
    proxy ever reads a route with neither. Refused (``SwitchRefused``) unless every target is
    placed and, if the app runs, running there."""
    _lock(app)
    placements = {
        p.environment.name: p for p in AppEnvironment.objects.filter(application=app).select_related("environment")
    }
    missing = [t for t in targets if t not in placements]
    if missing:
        raise SwitchRefused(f"not placed on {', '.join(missing)} any more")
    if app_runs(app):
        down = [t for t in targets if placements[t].status != AppStatus.RUNNING]
        if down:
            raise SwitchRefused(f"not running on {', '.join(down)}")
    target_ids = [placements[t].environment_id for t in targets]
    both = [placements[name].pk for name in [*sources, *targets] if name in placements]
    AppEnvironment.objects.filter(pk__in=both).update(
        serving=Case(When(environment_id__in=target_ids, then=Value(True)), default=Value(False))
    )
    audit("move_switched", app_name=app.name, environments=[*sources, *targets], request_id=job_id, via="queue")


@transaction.atomic
def unload_sources(app: Application, sources: Sequence[str], *, job_id: str) -> str:
    """The sources get a remove (stopped, unloaded, data kept) and are no longer placements.
    Returns the remove's request id (``""`` when they were gone already)."""
    _lock(app)
    gone = list(
        AppEnvironment.objects.filter(application=app, environment__name__in=list(sources)).values_list(
            "pk", "environment__name"
        )
    )
    if not gone:
        return ""
    request_id = request_remove(app, environments=[name for _pk, name in gone], via="queue")
    AppEnvironment.objects.filter(pk__in=[pk for pk, _name in gone]).delete()
    audit(
        "set_environments",
        app_name=app.name,
        environments=list(AppEnvironment.objects.filter(application=app).values_list("environment__name", flat=True)),
        request_id=job_id,
        via="queue",
        error=f"move job {job_id}: unloaded from {', '.join(name for _pk, name in gone)}",
    )
    outbox.publish_app(app)
    return request_id


@transaction.atomic
def roll_back_move(app: Application, added: Sequence[str], sources: Sequence[str], *, job_id: str, reason: str) -> None:
    """Before the switch: the targets the move added are removed again (the app never served
    there), and the sources serve as before. Audited as ``move_rolled_back``."""
    _lock(app)
    AppEnvironment.objects.filter(application=app, environment__name__in=list(sources)).update(serving=True)
    placed = list(
        AppEnvironment.objects.filter(application=app, environment__name__in=list(added), serving=False).values_list(
            "pk", "environment__name"
        )
    )
    if placed:
        request_remove(app, environments=[name for _pk, name in placed], via="queue")
        AppEnvironment.objects.filter(pk__in=[pk for pk, _name in placed]).delete()
    audit(
        "move_rolled_back",
        app_name=app.name,
        environments=[name for _pk, name in placed],
        request_id=job_id,
        via="queue",
        error=reason[:500],
    )
    outbox.publish_app(app)


@transaction.atomic
def set_environment_draining(
    env: Environment, draining: bool, user: AbstractBaseUser | None = None, via: str = "admin"
) -> bool:
    """Mark the environment draining (no new placements) or not. Returns whether it changed."""
    changed = Environment.objects.filter(pk=env.pk, draining=not draining).update(draining=draining)
    env.draining = draining
    if changed:
        audit(
            "environment_draining" if draining else "environment_undrained", user=user, environments=[env.name], via=via
        )
    return bool(changed)
