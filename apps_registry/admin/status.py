"""The JSON status endpoint the admin lists poll (``static/apps_registry/status.js``).

``GET /admin/app-supervisor/status.json?apps=1,2&environments=3,4&newer_than=7`` (primary keys
of the rows on the page, at most 500 each) → ``{"apps": {"<pk>": {"name", "statuses": {"<env>":
{"status", "observed", "detail", "error", "since", "position"}}}}, "environments": {"<pk>":
{"name", "status", "last_heartbeat", "running"}}, "new_apps": N}``.
``position`` is the app's place in the start queue while it is ``queued`` (else null);
``last_heartbeat`` the age of the environment's last sign of life and ``running`` the apps its
worker reports running (``environment_figures``); ``new_apps`` counts the applications created
after the one numbered ``newer_than`` (the list's "N new — reload" notice), only when asked.
Staff only. Applies pending worker events first and runs the throttled recovery check for
starts interrupted by a dead queue worker.
"""

from __future__ import annotations

import logging

from django.http import HttpRequest, JsonResponse
from django.utils.formats import date_format
from django.utils.timezone import localtime
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from apps_registry.admin import environment_figures
from apps_registry.control import liveness, redis_client
from apps_registry.control.shown_status import explain, shown_status
from apps_registry.models import AppEnvironment, Application, AppStatus, Environment, EnvironmentStatus

log = logging.getLogger(__name__)

MAX_ROWS = 500


def _pks(request: HttpRequest, name: str) -> list[int]:
    found = []
    for part in request.GET.get(name, "").split(",")[:MAX_ROWS]:
        if part.strip().isdigit():
            found.append(int(part))
    return found


def _refresh() -> None:
    if not redis_client.configured():
        return
    try:
        from apps_registry.control import ingest
        from apps_registry.control.start_queue import recovery

        ingest.ingest()
        recovery.recover_throttled()
    except Exception:  # show what the database says
        log.warning("status refresh failed", exc_info=True)


def _queue_positions() -> dict[str, int]:
    if not redis_client.configured():
        return {}
    try:
        from apps_registry.control.start_queue import enqueue

        return enqueue.queue_positions()
    except Exception:
        log.warning("could not read the start queue", exc_info=True)
        return {}


@never_cache
@require_GET
def status(request: HttpRequest) -> JsonResponse:
    user = request.user
    if not (user.is_active and user.is_staff):
        return JsonResponse({"error": "staff only"}, status=403)
    _refresh()
    payload: dict = {"apps": {}, "environments": {}}
    app_pks = _pks(request, "apps")
    if app_pks and user.has_perm("apps_registry.view_application"):
        rows = (
            AppEnvironment.objects.filter(application_id__in=app_pks)
            .order_by("environment__name")
            .values_list(
                "application_id", "application__name", "environment__name", "status", "error", "status_changed_at"
            )
        )
        rows = list(rows)
        positions = _queue_positions() if any(r[3] == AppStatus.QUEUED for r in rows) else {}
        env_statuses = liveness.environment_statuses(list(Environment.objects.filter(name__in={r[2] for r in rows})))
        for app_pk, app_name, env, state, error, since in rows:
            entry = payload["apps"].setdefault(str(app_pk), {"name": app_name, "statuses": {}})
            env_status, seen = env_statuses.get(env, (EnvironmentStatus.UNKNOWN, None))
            entry["statuses"][env] = {
                "status": shown_status(state, env_status),
                "observed": state,
                "detail": explain(state, env_status, seen),
                "error": error,
                "since": date_format(localtime(since), "DATETIME_FORMAT") if since else "",
                "position": positions.get(app_name) if state == AppStatus.QUEUED else None,
            }
    env_pks = _pks(request, "environments")
    if env_pks and user.has_perm("apps_registry.view_environment"):
        envs = list(Environment.objects.filter(pk__in=env_pks))
        statuses = liveness.environment_statuses(envs)
        running = environment_figures.running_apps(envs)
        for env in envs:
            status, seen = statuses[env.name]
            payload["environments"][str(env.pk)] = {
                "name": env.name,
                "status": str(status),
                "last_heartbeat": environment_figures.heartbeat_text(seen),
                "running": environment_figures.running_text(running[env.name], status),
            }
    newer_than = request.GET.get("newer_than", "")
    if newer_than.isdigit() and len(newer_than) < 19 and user.has_perm("apps_registry.view_application"):
        payload["new_apps"] = Application.objects.filter(pk__gt=int(newer_than)).count()
    return JsonResponse(payload)
