"""``POST /apps/<name>/move``, ``POST /environments/<name>/drain`` and ``/undrain``: tracked
jobs (``control.lifecycle``), answered ``202 {"job_id"}`` to follow with ``GET /jobs/<id>``.
A refused pre-check is a 409 and changes nothing."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import Router, Status
from ninja.params.functions import Path

from apps_registry.api.apps import AppPath, _get_app
from apps_registry.api.auth import TokenAuth
from apps_registry.api.body import JsonBody
from apps_registry.api.errors import ApiError
from apps_registry.api.responses import documented
from apps_registry.api.schemas import DrainState, JobAccepted, MoveRequest
from apps_registry.control.lifecycle import requests as lifecycle
from apps_registry.models import Environment
from apps_registry.names import is_valid_name

router = Router()


def _documented(status: int, model: type, text: str, conflict: str, what: str) -> dict[str, Any]:
    spec = documented(status, model, text, 404, 409, 413)
    spec["openapi_extra"]["responses"][404] = {"description": f"No such {what}"}
    spec["openapi_extra"]["responses"][409] = {"description": conflict}
    return spec


def _get_environment(name: str) -> Environment:
    env = Environment.objects.filter(name=name).first() if is_valid_name(name) else None
    if env is None:
        raise ApiError(404, f"no environment named {name[:60]!r}")
    return env


@router.post(
    "/apps/{name}/move",
    auth=TokenAuth("apps_registry.change_application", "apps_registry.start_application"),
    summary="Move the application onto exactly these environments, with no failed request",
    description=(
        "Starts it on the new environments through the start queue, waits until it serves there, switches "
        "its route in one step (requests in flight finish on the old ones), then unloads it from the old "
        "ones. Pre-checks: each new environment online, enabled, approved, not draining, same version. "
        "Needs apps_registry.change_application and apps_registry.start_application."
    ),
    **_documented(
        202,
        JobAccepted,
        "Queued; follow the job",
        "A pre-check failed or the app is being moved already: the message says why; nothing changed",
        "application",
    ),
)
def move_app(
    request: HttpRequest, name: AppPath = Path(..., example="sales_eu"), payload: MoveRequest = JsonBody(...)
) -> Status[dict[str, Any]]:
    app = _get_app(name)
    try:
        job = lifecycle.request_move(app, payload.to, request.auth, via="api")
    except lifecycle.MoveRefused as refusal:
        raise ApiError(409, str(refusal)) from None
    return Status(202, {"job_id": str(job.pk)})


@router.post(
    "/environments/{name}/drain",
    auth=TokenAuth("apps_registry.change_environment"),
    summary="Drain the environment: no new apps, every app it runs moves elsewhere",
    description=(
        "Marks it draining at once, then a job moves each of its apps (to the app's other environments, or "
        "to the usable environment with the fewest apps), a few at a time. A drain under way is answered "
        "again. Needs apps_registry.change_environment."
    ),
    **_documented(202, JobAccepted, "Draining; follow the job", "Not used", "environment"),
)
def drain_environment(
    request: HttpRequest, name: str = Path(..., example="env_a", max_length=63)
) -> Status[dict[str, Any]]:
    env = _get_environment(name)
    job = lifecycle.request_drain(env, request.auth, via="api")
    return Status(202, {"job_id": str(job.pk)})


@router.post(
    "/environments/{name}/undrain",
    auth=TokenAuth("apps_registry.change_environment"),
    summary="Take new apps on the environment again (a drain under way is cancelled)",
    **_documented(200, DrainState, "Not draining", "Not used", "environment"),
)
def undrain_environment(request: HttpRequest, name: str = Path(..., example="env_a", max_length=63)) -> dict[str, Any]:
    env = _get_environment(name)
    lifecycle.request_undrain(env, request.auth, via="api")
    return {"name": env.name, "draining": False}
