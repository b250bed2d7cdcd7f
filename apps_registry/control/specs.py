"""The JSON documents workers receive: AppSpec and EnvSpec, built from the registry.

AppSpec: ``{"name", "display_name", "domain", "options", "generation", "incarnation",
"environments": {"<env>": {"desired_running": bool}}}`` (``domain``: the custom domain or null).
EnvSpec: ``{"name", "url", "proxy_url", "enabled"}``.
Both adapters of ``apps_registry.control.discovery`` serve exactly these shapes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from django.db.models import QuerySet

from apps_registry.models import Application, Environment


def applications() -> QuerySet[Application]:
    """Applications with their placements and environments: two queries for any number."""
    return Application.objects.with_placements()


def app_spec(app: Application) -> dict:
    """AppSpec of ``app``; use an instance from ``applications()`` to avoid a query per app."""
    return {
        "name": app.name,
        "display_name": app.display_name or app.name,
        # The custom domain the app is also served at (null: none); the supervisor routes by it.
        "domain": app.domain or None,
        "options": dict(app.options or {}),
        "generation": app.generation,
        # Which app of this name: a worker keys its generations and local state by it.
        "incarnation": str(app.incarnation),
        "environments": {p.environment.name: {"desired_running": p.desired_running} for p in app.placements.all()},
    }


def env_spec(env: Environment) -> dict:
    return {"name": env.name, "url": env.url, "proxy_url": env.proxy_url, "enabled": env.enabled}


def app_spec_by_pk(pk: int) -> dict | None:
    app = applications().filter(pk=pk).first()
    return app_spec(app) if app is not None else None


def env_spec_by_pk(pk: int) -> dict | None:
    env = Environment.objects.filter(pk=pk).first()
    return env_spec(env) if env is not None else None


def all_app_specs() -> list[dict]:
    return [app_spec(app) for app in applications()]


def all_env_specs() -> list[dict]:
    return [env_spec(env) for env in Environment.objects.all()]


def dumps(spec: dict) -> str:
    """Canonical JSON: the same spec always gives the same bytes."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def by_name(specs: Iterable[dict]) -> dict[str, dict]:
    return {spec["name"]: spec for spec in specs}
