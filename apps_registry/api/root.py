"""The ninja API object of /api/v1/: its routers, error handlers, JSON rendering, the OpenAPI
document (``openapi.json``) generated from the schemas and the Swagger UI page (``docs``)."""

from __future__ import annotations

from typing import Any

from ninja import NinjaAPI, Swagger
from ninja.openapi.schema import OpenAPISchema
from ninja.renderers import JSONRenderer

from apps_registry.api import apps, backups, environments, errors, figures, jobs, lifecycle, logs


class CompactJSON(JSONRenderer):
    json_dumps_params = {"separators": (",", ":")}  # the API's answers have always been compact


class SupervisorApi(NinjaAPI):
    def get_openapi_schema(
        self, *, path_prefix: str | None = None, path_params: dict[str, Any] | None = None
    ) -> OpenAPISchema:
        # Paths relative to the server URL (/api/v1), as clients and the tests know them.
        return super().get_openapi_schema(path_prefix="", path_params=path_params)


api = SupervisorApi(
    title="App Supervisor API",
    version="1",
    description=(
        "Manage applications and environments. Authenticate with "
        "`Authorization: Bearer <token>` (python manage.py create_api_token <username>)."
    ),
    servers=[{"url": "/api/v1"}],
    urls_namespace="api_v1",
    renderer=CompactJSON(),
    # Swagger UI from ninja's static files ("ninja" in INSTALLED_APPS); no validator badge,
    # which would send the document to validator.swagger.io.
    docs=Swagger(settings={"validatorUrl": None}),
    docs_url="/docs",
    openapi_url="/openapi.json",
)
errors.install(api)
api.add_router("", environments.router)
api.add_router("", apps.router)
api.add_router("", logs.router)
api.add_router("", jobs.router)
api.add_router("", lifecycle.router)
api.add_router("", backups.router)
api.add_router("", figures.router)
