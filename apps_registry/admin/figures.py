"""The app page's "Figures" block (``application/_figures.html``): requests per minute, p50
latency, error rate and database size per environment and in total, from
``apps_registry.control.app_figures``. Every value is a number or a date formatted here; the
template escapes them anyway."""

from __future__ import annotations

import logging

import redis
from django.conf import settings
from django.template.defaultfilters import filesizeformat

from apps_registry.control import app_figures
from apps_registry.models import Application

log = logging.getLogger(__name__)


def _row(label: str, figures: dict) -> dict:
    rate = figures["error_rate"]
    return {
        "label": label,
        "requests": figures["requests"],
        "per_minute": f"{figures['requests_per_minute']:g}",
        "p50": "—" if figures["p50_ms"] is None else f"{figures['p50_ms']:g} ms",
        "error_rate": "—" if rate is None else f"{rate * 100:.1f} % ({figures['errors']})",
        "database": "—" if figures["database_bytes"] is None else filesizeformat(figures["database_bytes"]),
        "measured_at": figures["database_measured_at"] or "",
    }


def context(app: Application | None) -> dict:
    """``{"rows": [...], "note": str}`` for the template; rows empty when there is nothing."""
    if app is None or app.pk is None:
        return {"rows": [], "note": ""}
    if not (settings.APP_CONFIG.mode == "supervisor" and settings.APP_CONFIG.uses_redis):
        return {"rows": [], "note": "Figures are measured by workers (supervisor mode only)."}
    envs = sorted(p.environment.name for p in app.placements.all())
    if not envs:
        return {"rows": [], "note": "The app is on no environment."}
    try:
        figures = app_figures.read(app.name, envs).as_json()
    except redis.RedisError:
        log.warning("cannot read the figures of %s", app.name, exc_info=True)
        return {"rows": [], "note": "Redis is unavailable: no figures."}
    rows = [_row(env, figures["environments"][env]) for env in envs]
    if len(envs) > 1:
        rows.append(_row("All environments", figures["total"]))
    minutes = figures["window_seconds"] / 60
    return {"rows": rows, "note": f"Over the last {minutes:.1f} minutes, as the workers measured them."}
