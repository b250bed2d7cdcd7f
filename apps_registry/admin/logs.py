"""The app page's recent log lines per environment, and the JSON endpoint its live tail polls
(``static/apps_registry/logs.js``).

``GET /admin/app-supervisor/logs.json?app=<name>&environment=<env>&since=<id>`` →
``{"lines": [{"id", "at", "environment", "level", "message"}]}``, the lines after ``since``
(staff with ``view_application``). Lines are a worker's untrusted text: rendered through
``format_html`` here and as ``textContent`` by the script, never as markup.
"""

from __future__ import annotations

import logging

import redis
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.utils.html import format_html, format_html_join
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from apps_registry.control import app_logs
from apps_registry.models import Application, Environment

log = logging.getLogger(__name__)

SHOWN_LINES = 50


def _available() -> bool:
    # Only workers write log lines, through Redis: standalone has none to show.
    return settings.APP_CONFIG.mode == "supervisor" and settings.APP_CONFIG.uses_redis


def _rows(lines: list[app_logs.Line]) -> str:
    return format_html_join(
        "",
        '<li class="appsup-log-{}"><time>{}</time> <b>{}</b> {}</li>',
        ((line.level, f"{line.at:%Y-%m-%d %H:%M:%S}", line.level, line.message) for line in lines),
    )


def recent_logs(app: Application | None) -> str:
    """One block per environment of the app: its last lines, tailed live by logs.js."""
    if app is None or app.pk is None:
        return "—"
    if not _available():
        return "Log lines are kept by workers (supervisor mode only)."
    envs = [p.environment.name for p in app.placements.all()]
    if not envs:
        return "—"
    blocks = []
    for env in envs:
        try:
            lines = app_logs.read(app.name, [env], limit=SHOWN_LINES)
        except redis.RedisError:
            log.warning("cannot read the log lines of %s on %s", app.name, env, exc_info=True)
            blocks.append((env, "", "", format_html("<li>{}</li>", "Redis is unavailable: no log lines.")))
            continue
        since = lines[-1].id if lines else "0"
        rows = _rows(lines) if lines else format_html("<li class='appsup-log-empty'>{}</li>", "No log lines yet.")
        blocks.append((env, app.name, since, rows))
    return format_html_join(
        "",
        '<div class="appsup-logs"><h4>{0}</h4><ol class="appsup-log-lines" data-app="{1}" data-environment="{0}"'
        ' data-since="{2}">{3}</ol></div>',
        blocks,
    )


def _bad(field: str, message: str) -> JsonResponse:
    return JsonResponse({"errors": {field: [message]}}, status=400)


@never_cache
@require_GET
def logs(request: HttpRequest) -> JsonResponse:
    user = request.user
    if not (user.is_active and user.is_staff and user.has_perm("apps_registry.view_application")):
        return JsonResponse({"error": "staff with view_application only"}, status=403)
    name = request.GET.get("app", "")
    environment = request.GET.get("environment", "")
    since = request.GET.get("since", "")
    if not _available():
        return JsonResponse({"lines": []})
    if not Application.objects.filter(name=name[:100]).exists():
        return JsonResponse({"error": f"no application named {name[:60]!r}"}, status=404)
    if len(environment) > 63 or not Environment.objects.filter(name=environment).exists():
        return _bad("environment", f"no environment named {environment[:60]!r}")
    if since and not app_logs.valid_since(since):
        return _bad("since", "must be a line's id, such as 1700000000000-0")
    try:
        lines = app_logs.read(name, [environment], since=since, limit=SHOWN_LINES)
    except redis.RedisError:
        return JsonResponse({"error": "Redis is unavailable"}, status=503)
    return JsonResponse({"lines": [line.as_json() for line in lines]})
