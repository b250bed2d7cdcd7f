"""Applications: create, edit, place, delete; start, stop, restart and unload requests.

Every request bumps the app's generation under its row lock, is audited, and reaches the
workers through the outbox after commit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.db import models, transaction
from django.utils import timezone

from apps_registry.models import AppEnvironment, Application, AppStatus, Environment
from apps_registry.registry import outbox
from apps_registry.registry.requests import acting_user, audit, new_request_id, supersede_older

# Statuses from which a start may be requested: anything that is not already on its way up.
STARTABLE = (AppStatus.STOPPED, AppStatus.ERROR, AppStatus.STOPPING)
ACTIVE = (AppStatus.QUEUED, AppStatus.STARTING, AppStatus.RUNNING)


class ApplicationGone(Application.DoesNotExist):
    """The app was deleted by a concurrent request while this one waited for its row lock:
    the caller answers as if it had never existed (the API's 404), not with a crash."""


def _lock(app: Application) -> Application:
    """The app's row, locked for this transaction; ApplicationGone if it was deleted."""
    locked = Application.objects.select_for_update().only("pk", "generation").filter(pk=app.pk).first()
    if locked is None:
        raise ApplicationGone(f"no application named {app.name!r} (deleted meanwhile)")
    return locked


def _bump_generation(app: Application) -> int:
    """Take the app's row lock and bump its generation: requests for one app are serialised
    and numbered, so a command or queued start that carries an older number is stale."""
    generation = _lock(app).generation + 1
    Application.objects.filter(pk=app.pk).update(generation=generation)
    app.generation = generation
    return generation


def _placements(app: Application, environments: Sequence[str] | None) -> list[AppEnvironment]:
    placements = AppEnvironment.objects.filter(application=app).select_related("environment")
    if environments is not None:
        placements = placements.filter(environment__name__in=list(environments))
    return sorted(placements, key=lambda p: p.environment.name)


@dataclass(frozen=True)
class _Request:
    """A new request on an app: its id, the app's next generation (taken under its row lock)
    and the placements it concerns, sorted by environment name."""

    id: str
    generation: int
    placements: list[AppEnvironment]

    @property
    def ids(self) -> list[int]:
        return [p.pk for p in self.placements]

    @property
    def environments(self) -> list[str]:
        return [p.environment.name for p in self.placements]


def _open_request(app: Application, environments: Sequence[str] | None) -> _Request:
    request_id = new_request_id()
    generation = _bump_generation(app)
    return _Request(request_id, generation, _placements(app, environments))


def _audit_pending(action: str, app: Application, user: AbstractBaseUser | None, request: _Request, via: str) -> None:
    """The request's audit entry, pending until its outcome is known (requests.close_request);
    the app's earlier requests no longer wait to converge: this one decides."""
    supersede_older(app.name)
    audit(
        action,
        user=user,
        app_name=app.name,
        environments=request.environments,
        result="pending",
        request_id=request.id,
        via=via,
    )


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
    domain: str | None = None,
    failover: bool = False,
    via: str = "admin",
) -> Application:
    app = Application(
        failover=failover,
        name=name,
        display_name=display_name or name,
        description=description,
        options=options or {},
        domain=domain or None,
        created_by=acting_user(user),
        updated_by=acting_user(user),
    )
    app.full_clean()
    app.save()
    AppEnvironment.objects.bulk_create(AppEnvironment(application=app, environment=env) for env in environments)
    audit("create", user=user, app_name=name, environments=[e.name for e in environments], via=via)
    outbox.publish_app(app)
    return app


class PlacementWouldStop(Exception):
    """Removing these environments takes the app down: it runs (or is on its way up) on them
    and on none of those it keeps. Refused unless the caller passes ``force``."""

    def __init__(self, app: str, environments: Sequence[str]):
        self.app = app
        self.environments = sorted(environments)
        where = ", ".join(self.environments)
        super().__init__(
            f"removing {where} takes {app} down: it runs there and on none of the environments it keeps "
            "(it is stopped and unloaded there, its data kept); confirm with force"
        )


@dataclasses.dataclass(frozen=True)
class PlacementChange:
    """What ``set_application_environments`` did, for the caller to say so."""

    added: list[str]
    removed: list[str]
    taken_down: list[str]  # removed environments it was running on (now stopped there)
    start_request: str = ""  # the queued start on the added environments, if the app runs
    remove_request: str = ""

    @property
    def request_id(self) -> str:
        """The request to follow: the queued start if any, else the remove."""
        return self.start_request or self.remove_request


def _runs(placement: AppEnvironment) -> bool:
    # Desired running, or a start under way (desired_running is set only when the start job
    # reaches the environment, so a queued start counts too).
    return placement.desired_running or placement.status in ACTIVE


def takedown(app: Application, environments: Sequence[Environment]) -> list[str]:
    """The environments whose removal would take the app down (empty if it keeps running
    somewhere, or runs nowhere): what the admin asks to confirm and the API answers 409 for."""
    wanted = {env.pk for env in environments}
    current = _placements(app, None)
    if any(_runs(p) for p in current if p.environment_id in wanted):
        return []
    return [p.environment.name for p in current if p.environment_id not in wanted and _runs(p)]


@transaction.atomic
def set_application_environments(
    app: Application,
    environments: Sequence[Environment],
    user: AbstractBaseUser | None = None,
    via: str = "admin",
    *,
    force: bool = False,
) -> PlacementChange:
    """Place the app on exactly these environments, converging what runs with it: removed
    ones get a remove command (data kept); if the app runs, the added ones get a start
    through the start queue. Removing every environment it runs on raises
    ``PlacementWouldStop`` unless ``force``."""
    _lock(app)  # one placement edit (or request) at a time per app, decided on fresh rows
    wanted = {env.pk: env for env in environments}
    current = {p.environment_id: p for p in _placements(app, None)}
    added = [env for pk, env in wanted.items() if pk not in current]
    removed = [p for pk, p in current.items() if pk not in wanted]
    down = takedown(app, environments)
    if down and not force:
        raise PlacementWouldStop(app.name, down)
    running = any(_runs(p) for p in current.values())
    remove_request = start_request = ""
    AppEnvironment.objects.bulk_create(AppEnvironment(application=app, environment=env) for env in added)
    if removed:
        remove_request = request_remove(app, user, environments=[p.environment.name for p in removed], via=via)
        AppEnvironment.objects.filter(pk__in=[p.pk for p in removed]).delete()
    if added or removed:
        audit(
            "set_environments",
            user=user,
            app_name=app.name,
            environments=[env.name for env in environments],
            via=via,
        )
    if added and running:
        # The app is meant to be up: on its new environments too, else the edit never converges.
        start_request = request_start(app, user, environments=sorted(env.name for env in added), via=via)
    outbox.publish_app(app)
    return PlacementChange(
        added=sorted(env.name for env in added),
        removed=sorted(p.environment.name for p in removed),
        taken_down=down,
        start_request=start_request,
        remove_request=remove_request,
    )


@transaction.atomic
def update_application(app: Application, user: AbstractBaseUser | None = None, via: str = "admin") -> None:
    """Save edited descriptive fields (display name, description, options, custom domain) and
    the failover choice."""
    app.updated_by = acting_user(user)
    app.domain = app.domain or None
    app.full_clean()
    Application.objects.filter(pk=app.pk).update(
        display_name=app.display_name,
        description=app.description,
        options=app.options,
        domain=app.domain,
        failover=app.failover,
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
    request_id = new_request_id()
    # The lock first: a concurrent delete that got it before us makes this one ApplicationGone,
    # and the placements read below are those of the row we hold.
    generation = _bump_generation(app)
    envs = [p.environment.name for p in _placements(app, None)]
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
    """Queue a start of the app on its environments (one after another, by the start queue)."""
    request = _open_request(app, environments)
    now = timezone.now()
    AppEnvironment.objects.filter(pk__in=request.ids, status__in=STARTABLE).update(
        status=AppStatus.QUEUED, error="", status_changed_at=now, queued_at=now
    )
    # desired_running is set per environment by the start job as it reaches each one, so a
    # worker's reconciliation never starts the app ahead of the queue.
    _audit_pending("start", app, user, request, via)
    outbox.send_start(app, request.environments, generation=request.generation, request_id=request.id)
    return request.id


@transaction.atomic
def request_stop(
    app: Application,
    user: AbstractBaseUser | None = None,
    *,
    environments: Sequence[str] | None = None,
    via: str = "admin",
) -> str:
    request = _open_request(app, environments)
    now = timezone.now()
    # One UPDATE (this is the command round trip's hot path): a queued start that has not
    # begun is simply withdrawn, a starting or running app is on its way down.
    moving = (AppStatus.QUEUED, AppStatus.STARTING, AppStatus.RUNNING)
    AppEnvironment.objects.filter(pk__in=request.ids).update(
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
    _audit_pending("stop", app, user, request, via)
    outbox.publish_app(app)
    outbox.send_stop(app, request.environments, generation=request.generation, request_id=request.id)
    return request.id


@transaction.atomic
def request_restart(
    app: Application,
    user: AbstractBaseUser | None = None,
    *,
    environments: Sequence[str] | None = None,
    via: str = "admin",
) -> str:
    request = _open_request(app, environments)
    AppEnvironment.objects.filter(pk__in=request.ids).update(desired_running=True)
    _audit_pending("restart", app, user, request, via)
    outbox.publish_app(app)
    outbox.send_restart(app, request.environments, generation=request.generation, request_id=request.id)
    return request.id


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
    request = _open_request(app, environments)
    AppEnvironment.objects.filter(pk__in=request.ids).exclude(status=AppStatus.STOPPED).update(
        status=AppStatus.STOPPING, status_changed_at=timezone.now(), queued_at=None
    )
    AppEnvironment.objects.filter(pk__in=request.ids).update(desired_running=False)
    _audit_pending("remove_with_data" if drop_data else "remove", app, user, request, via)
    outbox.publish_app(app)
    outbox.send_remove(
        app, request.environments, generation=request.generation, request_id=request.id, drop_data=drop_data
    )
    return request.id
