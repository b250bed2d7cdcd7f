"""``/apps/<name>/logs``: the app's recent log lines per environment, as its workers wrote them
(``apps_registry.control.app_logs``); readable with the same permission as the app itself."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import Router
from ninja.params.functions import Path, Query

from apps_registry.api.apps import AppPath, _get_app
from apps_registry.api.auth import TokenAuth
from apps_registry.api.errors import ApiError
from apps_registry.api.responses import documented
from apps_registry.api.schemas import LogLines
from apps_registry.control import app_logs
from apps_registry.models import Environment

router = Router()
_DOCUMENTED = documented(200, LogLines, "Log lines", 404, 503)
# Not the commands' 503 ("after the change was committed"): here nothing changes.
_DOCUMENTED["openapi_extra"]["responses"][503] = {"description": "Redis unavailable: the lines cannot be read"}


@router.get(
    "/apps/{name}/logs",
    auth=TokenAuth("apps_registry.view_application"),
    summary="The application's recent log lines (requests, errors, starts), oldest first",
    **_DOCUMENTED,
)
def app_log_lines(
    request: HttpRequest,
    name: AppPath = Path(..., example="sales_eu"),
    environment: str = Query("", description="one environment (default: every environment of the app, merged)"),
    since: str = Query("", description="a line's id: only the lines after it (to page forward or tail)"),
    limit: int = Query(app_logs.DEFAULT_LIMIT, ge=1, le=app_logs.MAX_LIMIT),
) -> dict[str, Any]:
    app = _get_app(name)
    if environment:
        # An environment the app left keeps its last lines until they expire: any known one.
        if len(environment) > 63 or not Environment.objects.filter(name=environment).exists():
            raise ApiError(400, errors={"environment": [f"no environment named {environment[:60]!r}"]})
        environments = [environment]
    else:
        environments = sorted(p.environment.name for p in app.placements.all())
    if since and not app_logs.valid_since(since):
        raise ApiError(400, errors={"since": ["must be a line's id, such as 1700000000000-0"]})
    lines = app_logs.read(app.name, environments, since=since, limit=limit)
    return {"lines": [line.as_json() for line in lines]}
