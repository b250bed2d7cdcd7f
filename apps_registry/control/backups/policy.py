"""How often an app is backed up and how many backups it keeps: the fleet's defaults
(``APP_BACKUP_INTERVAL``, ``APP_BACKUP_KEEP``), overridden per app by its options'
``{"backups": {"interval": <seconds, 0: never>, "keep": <n>}}``."""

from __future__ import annotations

from django.conf import settings

from apps_registry.models import Application

MAX_KEEP = 1000


def _override(app: Application) -> dict:
    value = (app.options or {}).get("backups")
    return value if isinstance(value, dict) else {}


def interval_for(app: Application) -> float:
    """Seconds between scheduled backups of ``app``; 0: none scheduled."""
    value = _override(app).get("interval")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return settings.APP_CONFIG.backup_interval


def keep_for(app: Application) -> int:
    value = _override(app).get("keep")
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_KEEP:
        return value
    return settings.APP_CONFIG.backup_keep
