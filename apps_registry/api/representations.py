"""What the API returns for applications and environments, read from the registry (plain
dicts; the endpoints' response models validate and document them)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.utils import timezone

from apps_registry.control import liveness, redis_client
from apps_registry.control.shown_status import shown_status
from apps_registry.models import AppEnvironment, Application, Environment, EnvironmentStatus, StartMode

log = logging.getLogger(__name__)


def refresh() -> None:
    """Apply pending worker events so the statuses returned are fresh."""
    if not redis_client.configured():
        return
    try:
        from apps_registry.control.ingest import ingest

        ingest()
    except Exception:  # stale statuses beat a failed read
        log.warning("event ingest failed", exc_info=True)


def apps_json(names: list[str] | None = None) -> list[dict[str, Any]]:
    """The App representation of every app (or of ``names``), from two flat queries: model
    instances and per-row prefetch querysets cost ~10x more at a thousand apps."""
    apps = Application.objects.order_by("name")
    placements = AppEnvironment.objects.order_by("environment__name")
    if names is not None:
        apps = apps.filter(name__in=names)
        placements = placements.filter(application__name__in=names)
    by_app: dict[int, list[tuple[str, str, str, dt.datetime | None]]] = {}
    rows = placements.values_list("application_id", "environment__name", "status", "error", "status_changed_at")
    for app_id, env, status, error, at in rows:
        by_app.setdefault(app_id, []).append((env, status, error, at))
    liveness_of = liveness.environment_statuses(list(Environment.objects.all()))
    now = timezone.now()
    result = []
    for pk, name, display_name, options in apps.values_list("pk", "name", "display_name", "options"):
        rows = by_app.get(pk, [])
        options = options or {}
        result.append(
            {
                "name": name,
                "display_name": display_name,
                "environments": [env for env, *_rest in rows],
                "statuses": {
                    env: shown_status(status, liveness_of.get(env, (EnvironmentStatus.UNKNOWN, None))[0])
                    for env, status, _e, _at in rows
                },
                "observed": {
                    env: {
                        "status": status,
                        "at": at.isoformat() if at else None,
                        "age_seconds": round((now - at).total_seconds(), 3) if at else None,
                        "environment_status": str(liveness_of.get(env, (EnvironmentStatus.UNKNOWN, None))[0]),
                    }
                    for env, status, _e, at in rows
                },
                "errors": {env: error for env, _s, error, _at in rows if error},
                "modules": list(options.get("modules", [])),
                "start_mode": options.get("start_mode", StartMode.MANUAL.value),
            }
        )
    return result


def environments_json(envs: list[Environment]) -> list[dict[str, Any]]:
    """Each environment with its liveness (one Redis round trip for all)."""
    statuses = liveness.environment_statuses(envs)
    rows = []
    for env in envs:
        status, seen = statuses.get(env.name, ("unknown", None))
        rows.append(
            {
                "name": env.name,
                "url": env.url,
                "proxy_url": env.proxy_url,
                "version": env.version,
                "status": str(status),
                "last_heartbeat": seen or env.last_heartbeat,
            }
        )
    return rows
