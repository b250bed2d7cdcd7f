"""What the API returns for applications and environments, read from the registry (plain
dicts; the endpoints' response models validate and document them)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.db.models import FloatField, Func
from django.utils import timezone

from apps_registry.control import liveness, redis_client
from apps_registry.control.shown_status import shown_status
from apps_registry.models import AppEnvironment, Application, Environment, EnvironmentStatus, StartMode

log = logging.getLogger(__name__)
UNKNOWN = str(EnvironmentStatus.UNKNOWN)
MANUAL = StartMode.MANUAL.value


def refresh() -> None:
    """Apply pending worker events so the statuses returned are fresh."""
    if not redis_client.configured():
        return
    try:
        from apps_registry.control.ingest import ingest

        ingest()
    except Exception:  # stale statuses beat a failed read
        log.warning("event ingest failed", exc_info=True)


class EpochSeconds(Func):
    """A timestamp as seconds since the epoch. Django's PostgreSQL timestamptz loader is Python
    code (about 9 µs a value): at a thousand apps × two environments it was a fifth of the list."""

    output_field = FloatField()

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> tuple[str, list]:
        return self.as_sql(compiler, connection, template="EXTRACT(EPOCH FROM %(expressions)s)::float8", **extra)

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> tuple[str, list]:
        # julianday() counts days from noon, 24 November 4714 BC (2440587.5 is 1970-01-01) and
        # reads milliseconds: rounded to them, as the float arithmetic is off by microseconds.
        template = "ROUND((julianday(%(expressions)s) - 2440587.5) * 86400.0, 3)"
        return self.as_sql(compiler, connection, template=template, **extra)


def apps_json(names: list[str] | None = None) -> list[dict[str, Any]]:
    """The App representation of every app (or of ``names``), from two flat queries: model
    instances and per-row prefetch querysets cost ~10x more at a thousand apps. Each
    placement's parts are built once, in the loop over placements (bench/api_bench.py)."""
    apps = Application.objects.order_by("name")
    placements = AppEnvironment.objects.order_by("environment__name")
    if names is not None:
        apps = apps.filter(name__in=names)
        placements = placements.filter(application__name__in=names)
    environments = list(Environment.objects.all())
    liveness_of = {name: str(status) for name, (status, _seen) in liveness.environment_statuses(environments).items()}
    now = timezone.now()
    # app id → (environments, statuses shown, observed, errors)
    by_app: dict[int, tuple[list[str], dict[str, str], dict[str, dict], dict[str, str]]] = {}
    rows = placements.annotate(changed=EpochSeconds("status_changed_at")).values_list(
        "application_id", "environment__name", "status", "error", "changed"
    )
    for app_id, env, status, error, changed in rows:
        at = dt.datetime.fromtimestamp(float(changed), tz=dt.UTC) if changed is not None else None
        parts = by_app.get(app_id)
        if parts is None:
            parts = by_app[app_id] = ([], {}, {}, {})
        env_status = liveness_of.get(env, UNKNOWN)
        parts[0].append(env)
        parts[1][env] = shown_status(status, env_status)
        parts[2][env] = {
            "status": status,
            "at": at.isoformat() if at else None,
            "age_seconds": round((now - at).total_seconds(), 3) if at else None,
            "environment_status": env_status,
        }
        if error:
            parts[3][env] = error
    result = []
    for pk, name, display_name, domain, options, failover in apps.values_list(
        "pk", "name", "display_name", "domain", "options", "failover"
    ):
        placed, statuses, observed, errors = by_app.get(pk) or ([], {}, {}, {})
        options = options or {}
        result.append(
            {
                "name": name,
                "display_name": display_name,
                "domain": domain,
                "environments": placed,
                "statuses": statuses,
                "observed": observed,
                "errors": errors,
                "modules": list(options.get("modules", [])),
                "start_mode": options.get("start_mode", MANUAL),
                "failover": failover,
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
                "draining": env.draining,
            }
        )
    return rows
