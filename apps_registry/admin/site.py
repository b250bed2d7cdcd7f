"""What every page of the *App supervisor* section shares: the site's titles, the stylesheet
and live-status script, the badge markup, bringing statuses up to date before a list renders,
and the admin's own 404 page."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.html import format_html
from django.views import defaults

admin.site.site_header = "App Supervisor"
admin.site.site_title = "App Supervisor"
admin.site.index_title = "Control plane"
# The supervisor has no public site: "View site" led to a bare 404 at /. Gone.
admin.site.site_url = None


class SupervisorMedia:
    css = {"all": ("apps_registry/admin.css",)}
    # Live badges on the lists (polling apps_registry.admin.status); the app page's log tail
    # (polling apps_registry.admin.logs).
    js = ("apps_registry/status.js", "apps_registry/logs.js")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """``handler404``: an unknown ``/admin/…`` URL answers inside the admin (header, breadcrumbs,
    dark mode), with a way home; anything else keeps Django's plain page."""
    if not request.path.startswith("/admin/"):
        return defaults.page_not_found(request, exception)
    context = {**admin.site.each_context(request), "title": "Page not found", "missing_path": request.path}
    return TemplateResponse(request, "admin/apps_registry/404.html", context, status=404).render()


def apply_worker_events() -> None:
    """Bring statuses up to date before a list renders (supervisor: the workers' events)."""
    config = settings.APP_CONFIG
    if config.mode == "supervisor" and config.command_adapter == "redis":
        from apps_registry.control import ingest

        ingest.ingest()


def status_badge(status: str, label: str = "", detail: str = "") -> str:
    """The badge status.js repaints in place: its classes and text are what the script rewrites;
    ``detail`` (why a status is what it is) goes in its title."""
    text = f"{label}: {status}" if label else status
    title = f"{text} ({detail})" if detail else text
    return format_html('<span class="appsup-badge appsup-{}" title="{}">{}</span>', status, title, text)
