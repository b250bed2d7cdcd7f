"""Start on first visit: an app whose start mode is ``on_first_visit`` is queued for a start
when someone requests its URL while it is stopped. The visitor gets the 503 page with
Retry-After until it runs.

A burst of visitors makes one request, not one each: a short Redis ``SET NX`` per app (or an
in-process one in standalone without Redis) lets only the first through.
"""

from __future__ import annotations

import logging
import threading
import time

from apps_registry.control import keys, redis_client
from apps_registry.models import AppEnvironment, Application, AppStatus, StartMode
from apps_registry.registry import actions

log = logging.getLogger(__name__)

# While a first-visit start is this fresh, further visits do not request another.
DEBOUNCE_SECONDS = 5.0
_local_seen: dict[str, float] = {}
_local_guard = threading.Lock()


def _first_caller(app_name: str) -> bool:
    if redis_client.configured():
        key = keys.first_visit_lock(app_name)
        return bool(redis_client.commands().set(key, "1", nx=True, px=int(DEBOUNCE_SECONDS * 1000)))
    now = time.monotonic()
    with _local_guard:
        if now - _local_seen.get(app_name, -DEBOUNCE_SECONDS) < DEBOUNCE_SECONDS:
            return False
        _local_seen[app_name] = now
        return True


def start_on_first_visit(app_name: str, options: dict | None = None) -> str | None:
    """Queue a start if the app starts on first visit and is stopped somewhere; return
    ``"queued"`` if a start is (or was just) requested, else None."""
    if options is not None and options.get("start_mode") != StartMode.FIRST_VISIT:
        return None
    app = Application.objects.filter(name=app_name).first()
    if app is None or app.start_mode != StartMode.FIRST_VISIT:
        return None
    placements = AppEnvironment.objects.filter(application=app, environment__enabled=True)
    if not placements.filter(status=AppStatus.STOPPED).exists():
        # Already on its way (an earlier visitor) or in another state an operator handles.
        return AppStatus.QUEUED if placements.filter(status=AppStatus.QUEUED).exists() else None
    try:
        if not _first_caller(app_name):
            return AppStatus.QUEUED
    except Exception:  # without the debounce, still start: the queue serialises it anyway
        log.warning("first-visit debounce unavailable for %s", app_name, exc_info=True)
    actions.request_start(app, None, via="first_visit")
    log.info("start of %s requested by its first visit", app_name)
    return AppStatus.QUEUED
