"""``/apps/<name>/figures``: requests per minute, p50 latency, error rate and database size of
the app over the last minutes, per environment and in total, as its workers measured them
(``apps_registry.control.app_figures``); readable with the same permission as the app itself."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import Router
from ninja.params.functions import Path

from apps_registry.api.apps import AppPath, _get_app
from apps_registry.api.auth import TokenAuth
from apps_registry.api.responses import documented
from apps_registry.api.schemas import AppFiguresOut
from apps_registry.control import app_figures

router = Router()
_DOCUMENTED = documented(200, AppFiguresOut, "Figures", 404, 503)
# Not the commands' 503 ("after the change was committed"): here nothing changes.
_DOCUMENTED["openapi_extra"]["responses"][503] = {"description": "Redis unavailable: the figures cannot be read"}


@router.get(
    "/apps/{name}/figures",
    auth=TokenAuth("apps_registry.view_application"),
    summary="The application's requests per minute, p50 latency, error rate and database size (last 5 minutes)",
    **_DOCUMENTED,
)
def app_figures_view(request: HttpRequest, name: AppPath = Path(..., example="sales_eu")) -> dict[str, Any]:
    app = _get_app(name)
    environments = sorted(p.environment.name for p in app.placements.all())
    return app_figures.read(app.name, environments).as_json()
