"""``/apps`` endpoints: list, read, create, edit and delete applications, start, stop and restart
them. Every change goes through ``apps_registry.registry.actions`` (audit trail with
``via="api"``); the permissions are the admin's, checked by ``TokenAuth`` before the body is read."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Annotated, Any

from django.contrib.auth.hashers import make_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse
from ninja import Router, Status
from ninja.params.functions import Path, Query
from pydantic import AfterValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from apps_registry.api import representations
from apps_registry.api.auth import PermissionMissing, TokenAuth
from apps_registry.api.body import JsonBody
from apps_registry.api.errors import ApiError
from apps_registry.api.responses import documented
from apps_registry.api.schemas import (
    NAME_SCHEMA,
    Accepted,
    App,
    AppCreate,
    AppCreated,
    AppList,
    AppPatch,
    Operation,
)
from apps_registry.models import Application, Environment
from apps_registry.names import check_first_admin_password, is_valid_name
from apps_registry.registry import actions, outbox

router = Router()

_BOOLEAN_TEXT = ("true", "false", "1", "0")


def _boolean_text(value: str) -> str:
    if value.lower() not in _BOOLEAN_TEXT:
        raise PydanticCustomError("boolean_text", "must be true or false")
    return value.lower()


# A path name is not validated as a name: an invalid one is simply no application (404).
AppPath = Annotated[str, WithJsonSchema(NAME_SCHEMA)]
DropData = Annotated[
    str,
    AfterValidator(_boolean_text),
    WithJsonSchema({"type": "string", "enum": list(_BOOLEAN_TEXT), "default": "false"}),
]


def _get_app(name: str) -> Application:
    app = Application.objects.with_placements().filter(name=name).first() if is_valid_name(name) else None
    if app is None:
        raise ApiError(404, f"no application named {name[:60]!r}")
    return app


def _refuse_draining(envs: list[Environment], placed: set[str]) -> None:
    """A draining environment takes no new placements (it keeps the ones it has until they move)."""
    draining = [env.name for env in envs if env.draining and env.name not in placed]
    if draining:
        errors = [f"{name} is draining: it takes no new apps while its apps move elsewhere" for name in draining]
        raise ApiError(400, errors={"environments": errors})


def _name_taken(error: ValidationError) -> bool:
    details = getattr(error, "error_dict", {}).get("name", [])
    return any(detail.code == "unique" for detail in details)


def _domain_taken(error: ValidationError) -> bool:
    details = getattr(error, "error_dict", {}).get("domain", [])
    return any(detail.code == "unique" for detail in details)


def _conflict(name: str, domain: str | None) -> str:
    """A unique constraint hit at commit: the name's, or the domain's (whichever is taken)."""
    if domain and Application.objects.filter(domain=domain).exists():
        return f"another application already has the domain {domain!r}"
    return f"an application named {name!r} already exists"


@router.get(
    "/apps",
    auth=TokenAuth("apps_registry.view_application"),
    summary="List applications with their status per environment",
    **documented(200, AppList, "Applications"),
)
def list_apps(request: HttpRequest) -> HttpResponse:
    representations.refresh()
    # Answered as built, not through the response model: serialising a thousand apps with
    # pydantic took ~120 ms of the request (bench/api_bench.py); the model still documents
    # the answer, and the tests check every answer against the document.
    body = json.dumps({"apps": representations.apps_json()}, separators=(",", ":"))
    return HttpResponse(body, content_type="application/json; charset=utf-8")


@router.post(
    "/apps",
    auth=TokenAuth("apps_registry.add_application"),
    summary="Create an application",
    exclude_unset=True,  # request_id and initial_admin appear only when they apply
    **documented(201, AppCreated, "Created", 409, 413, 503),
)
def create_app(request: HttpRequest, payload: AppCreate = JsonBody(...)) -> Status[dict[str, Any]]:
    user = request.auth
    if payload.start and not user.has_perm("apps_registry.start_application"):
        raise PermissionMissing("permission denied: needs apps_registry.start_application")
    representations.refresh()  # an environment that just registered may be named
    found = {env.name: env for env in Environment.objects.filter(name__in=payload.environments)}
    unknown = [name for name in payload.environments if name not in found]
    if unknown:
        raise ApiError(400, errors={"environments": [f"unknown environment {n[:60]!r}" for n in unknown]})
    _refuse_draining([found[name] for name in payload.environments], placed=set())
    if Application.objects.filter(name=payload.name).exists():
        raise ApiError(409, f"an application named {payload.name!r} already exists")
    # Refused while Redis is down, before anything changes: the 503 could not carry the
    # generated admin password, and the workers could not learn about the app.
    outbox.require_channel("creation", payload.name)
    password = payload.admin_password
    try:
        check_first_admin_password(password or "", user)
    except ValidationError as error:
        raise ApiError(400, errors={"admin_password": error.messages}) from None
    generated = password is None
    if generated:
        password = secrets.token_urlsafe(12)
    username = payload.admin_username  # stripped by the schema
    options = {
        "modules": payload.modules,
        "start_mode": payload.start_mode.value,
        "initial_admin": {"username": username, "password_hash": make_password(password)},
    }
    try:
        app = actions.create_application(
            name=payload.name,
            environments=[found[name] for name in payload.environments],
            user=user,
            display_name=payload.display_name,
            description=payload.description,
            options=options,
            domain=payload.domain or None,
            failover=payload.failover,
            via="api",
        )
    except IntegrityError:
        raise ApiError(409, _conflict(payload.name, payload.domain)) from None
    except ValidationError as error:
        # A concurrent create of the same name that committed after our exists() check is
        # seen by full_clean's unique check: still a conflict, not bad input.
        if _name_taken(error):
            raise ApiError(409, f"an application named {payload.name!r} already exists") from None
        if _domain_taken(error):
            raise ApiError(409, f"another application already has the domain {payload.domain!r}") from None
        raise ApiError(400, errors={k: list(v) for k, v in error.message_dict.items()}) from None
    result: dict[str, Any] = {}
    if payload.start:
        result["request_id"] = actions.request_start(app, user, via="api")
    result.update(representations.apps_json([app.name])[0])
    if generated:
        # Shown once, as the admin does; only its hash is stored.
        result["initial_admin"] = {"username": username, "password": password}
    return Status(201, result)


@router.get(
    "/apps/{name}",
    auth=TokenAuth("apps_registry.view_application"),
    summary="One application",
    **documented(200, App, "The application", 404),
)
def get_app(request: HttpRequest, name: AppPath = Path(..., example="sales_eu")) -> dict[str, Any]:
    representations.refresh()
    return representations.apps_json([_get_app(name).name])[0]


@router.patch(
    "/apps/{name}",
    auth=TokenAuth("apps_registry.change_application"),
    summary="Edit an application: display name, description, custom domain, environments, failover",
    description=(
        "Only the fields given change. A change of environments converges: removed environments get a "
        "remove (stopped and unloaded there, data kept); if the app runs, added ones get a start through "
        "the start queue. Removing every environment the app runs on takes it down: 409 unless force. "
        "Needs apps_registry.change_application, as the admin's change form."
    ),
    **documented(
        200,
        App,
        "Changed; nothing had to be sent to the workers",
        404,
        409,
        413,
        503,
        also={202: (Accepted, "Changed; a start or remove went out: follow it in the audit trail by request_id")},
    ),
)
def edit_app(
    request: HttpRequest, name: AppPath = Path(..., example="sales_eu"), payload: AppPatch = JsonBody(...)
) -> Status[dict[str, Any]]:
    user = request.auth
    if payload.environments is not None:
        representations.refresh()  # an environment that just registered may be named
    # One transaction: a refused placement edit (409) leaves the descriptive fields unchanged too.
    with transaction.atomic():
        app = _get_app(name)
        described = (payload.display_name, payload.description, payload.domain, payload.failover)
        if any(value is not None for value in described):
            if payload.display_name is not None:
                app.display_name = payload.display_name or app.name
            if payload.description is not None:
                app.description = payload.description
            if payload.domain is not None:
                app.domain = payload.domain or None
            if payload.failover is not None:
                app.failover = payload.failover
            try:
                with transaction.atomic():
                    actions.update_application(app, user, via="api")
            except IntegrityError:
                raise ApiError(409, f"another application already has the domain {payload.domain!r}") from None
            except ValidationError as error:
                if _domain_taken(error):
                    raise ApiError(409, f"another application already has the domain {payload.domain!r}") from None
                raise ApiError(400, errors={k: list(v) for k, v in error.message_dict.items()}) from None
        change = None
        if payload.environments is not None:
            found = {env.name: env for env in Environment.objects.filter(name__in=payload.environments)}
            unknown = [env for env in payload.environments if env not in found]
            if unknown:
                raise ApiError(400, errors={"environments": [f"unknown environment {n[:60]!r}" for n in unknown]})
            _refuse_draining(
                [found[env] for env in payload.environments], {p.environment.name for p in app.placements.all()}
            )
            try:
                change = actions.set_application_environments(
                    app, [found[env] for env in payload.environments], user, via="api", force=payload.force
                )
            except actions.PlacementWouldStop as refusal:
                raise ApiError(409, str(refusal)) from None
    if change is not None and change.request_id:
        return Status(202, {"request_id": change.request_id, "app": app.name})
    return Status(200, representations.apps_json([app.name])[0])


@router.delete(
    "/apps/{name}",
    auth=TokenAuth("apps_registry.delete_application"),
    summary="Remove the application from its environments and the registry",
    **documented(204, None, "Removed", 404, 503),
)
def delete_app(
    request: HttpRequest,
    name: AppPath = Path(..., example="sales_eu"),
    drop_data: DropData = Query("false", description="also drop the app's database"),
) -> HttpResponse:
    app = _get_app(name)
    actions.delete_application(app, request.auth, drop_data=drop_data in ("true", "1"), via="api")
    return HttpResponse(status=204)


def _operation(verb: str, action: Callable[..., str]) -> None:
    """Register ``POST /apps/{name}/<verb>``."""
    permission = f"{verb}_application"

    def operate(
        request: HttpRequest,
        name: AppPath = Path(..., example="sales_eu"),
        payload: Operation = JsonBody(None),
    ) -> Status[dict[str, Any]]:
        app = _get_app(name)
        envs = payload.environments
        if envs is not None:
            placed = {p.environment.name for p in app.placements.all()}
            strangers = [env for env in envs if env not in placed]
            if strangers:
                errors = [f"{app.name} is not on environment {env[:60]!r}" for env in strangers]
                raise ApiError(400, errors={"environments": errors})
        request_id = action(app, request.auth, environments=envs, via="api")
        return Status(202, {"request_id": request_id, "app": app.name})

    operate.__name__ = f"{verb}_app"  # the operationId and URL name
    router.post(
        f"/apps/{{name}}/{verb}",
        auth=TokenAuth(f"apps_registry.{permission}"),
        summary=f"{verb.capitalize()} the app on its environments",
        description=(
            "Starts are queued and run one environment after another; stop and restart go out at once. "
            f"Needs apps_registry.{permission}. The last request wins."
        ),
        **documented(202, Accepted, "Accepted; follow it in the audit trail by request_id", 404, 413, 503),
    )(operate)


_operation("start", actions.request_start)
_operation("stop", actions.request_stop)
_operation("restart", actions.request_restart)
