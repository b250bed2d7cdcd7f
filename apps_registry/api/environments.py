"""``GET /environments``: the registered environments with their liveness."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import Router

from apps_registry.api import representations
from apps_registry.api.auth import TokenAuth
from apps_registry.api.responses import documented
from apps_registry.api.schemas import EnvironmentList
from apps_registry.models import Environment

router = Router()


@router.get(
    "/environments",
    auth=TokenAuth("apps_registry.view_environment"),
    summary="List environments with their liveness",
    **documented(200, EnvironmentList, "Environments"),
)
def list_environments(request: HttpRequest) -> dict[str, Any]:
    representations.refresh()  # registrations create environments
    return {"environments": representations.environments_json(list(Environment.objects.order_by("name")))}
