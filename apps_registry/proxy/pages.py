"""The pages the proxy answers itself: the environment chooser and errors a person understands.

HTML for browsers, JSON when the client asks for ``application/json``. No traceback, no
supervisor session: these pages are rendered without a request context.
"""

from __future__ import annotations

import json

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.urls import reverse

from apps_registry.control import liveness
from apps_registry.control.shown_status import shown_status
from apps_registry.proxy.routing import ENV_COOKIE, ENV_PARAM, AppRoute
from supervisor_site.unavailable import advice, refresh_after, status_text, wants_json


def _page(
    request: HttpRequest,
    status: int,
    title: str,
    message: str,
    data: dict,
    *,
    app: AppRoute | None = None,
    headers: dict[str, str] | None = None,
    refresh: int | None = None,
    start_url: str = "",
) -> HttpResponse:
    if wants_json(request):
        body = json.dumps({"status": status, "error": title, "detail": message, **data})
        response = HttpResponse(body, status=status, content_type="application/json")
    else:
        html = render_to_string(
            "apps_registry/proxy/error.html",
            {
                "status": status,
                "title": title,
                "message": message,
                "app": app,
                "refresh": refresh,
                "start_url": start_url,
            },
        )
        response = HttpResponse(html, status=status, content_type="text/html; charset=utf-8")
    response["Cache-Control"] = "no-store"
    for key, value in (headers or {}).items():
        response[key] = value
    return response


def simple(request: HttpRequest, status: int, title: str, message: str) -> HttpResponse:
    return _page(request, status, title, message, {})


def not_found(request: HttpRequest, name: str | None) -> HttpResponse:
    message = f"There is no application named {name}." if name else "This address does not name an application."
    return _page(request, 404, "Application not found", message, {"app": name})


def start_url_for(app: AppRoute, status: str) -> str:
    """For a stopped app, the admin's start operation (its confirmation page, a POST with CSRF
    behind the admin's sign-in and the start permission), or ''. The supervisor's session cookie
    lives under /admin/ only, so this page cannot tell who is signed in: the link is for
    operators, and the admin decides. Path mode only: on an app's own origin /admin/ is the
    app's admin, and the supervisor's origin is not known here."""
    if status != "stopped" or settings.APP_CONFIG.apps_domain:
        return ""
    return reverse("admin:apps_registry_application_operation", args=[app.pk, "start"])


def back_url_for(app: AppRoute) -> str:
    """The chooser's way back: the app's page in the supervisor's admin (its cockpit), where
    Visit led from. Path mode only, as ``start_url_for``: on an app's own origin the
    supervisor's is not known here, and the browser's Back button remains."""
    if settings.APP_CONFIG.apps_domain:
        return ""
    return reverse("admin:apps_registry_application_change", args=[app.pk])


def unavailable(request: HttpRequest, app: AppRoute, status: str, retry_after: int) -> HttpResponse:
    text = status_text(status)
    return _page(
        request,
        503,
        "Application not running",
        f"{app.display_name} {text}. {advice(status)}",
        {"app": app.name, "app_status": status, "retry_after": retry_after},
        app=app,
        headers={"Retry-After": str(retry_after)},
        refresh=retry_after if refresh_after(status) is not None else None,
        start_url=start_url_for(app, status),
    )


def busy(request: HttpRequest, app: AppRoute, retry_after: int) -> HttpResponse:
    """The app is at its cap of concurrent requests (PROXY_APP_CONCURRENCY), or the proxy at
    its own (PROXY_CONCURRENCY): a fast refusal, for this app only."""
    response = _page(
        request,
        503,
        "Application busy",
        f"{app.display_name} {status_text('busy')}. {advice('busy')}",
        {"app": app.name, "busy": True, "retry_after": retry_after},
        app=app,
        headers={"Retry-After": str(retry_after)},
        refresh=retry_after,
    )
    # Not one ERROR line per refusal from django.request: an app at its cap refuses hundreds
    # a second, which the proxy's metrics count (status class 5xx) and the access log shows.
    response._has_been_logged = True
    return response


def bad_gateway(request: HttpRequest, app: AppRoute, environments: tuple[str, ...], what: str) -> HttpResponse:
    names = ", ".join(environments)
    noun = "Environment" if len(environments) == 1 else "Environments"
    return _page(
        request,
        502,
        "Environment unavailable",
        f"{noun} {names} running {app.display_name} {what}.",
        {"app": app.name, "environments": list(environments)},
        app=app,
    )


def gateway_timeout(request: HttpRequest, app: AppRoute, environment: str, seconds: float) -> HttpResponse:
    return _page(
        request,
        504,
        "Environment too slow",
        f"Environment {environment} did not answer {app.display_name}'s request within {seconds:g} seconds.",
        {"app": app.name, "environments": [environment], "timeout_seconds": seconds},
        app=app,
    )


def bad_request_body(request: HttpRequest) -> HttpResponse:
    """The client's body could not be read (supervisor_site/client_input.py). The server
    closes the connection after it (gunicorn does when reading the body failed)."""
    return _page(request, 400, "Bad request", "The request body could not be read.", {})


def too_large(request: HttpRequest, limit: int) -> HttpResponse:
    megabytes = limit / (1024 * 1024)
    return _page(
        request,
        413,
        "Upload too large",
        f"The request body is larger than the limit of {megabytes:.1f} MB.",
        {"limit_bytes": limit},
    )


def chooser(request: HttpRequest, app: AppRoute, notice: str) -> HttpResponse:
    """The app's environments with their statuses; the ones that can serve it are links."""
    path = request.path
    rows = [
        {
            "environment": p.environment,
            "env_status": p.env_status if p.enabled else "disabled",
            "last_seen": liveness.describe_age(p.last_seen),
            "app_status": shown_status(p.app_status, p.env_status),
            "choosable": p.choosable,
            "href": f"{path}?{ENV_PARAM}={p.environment}",
        }
        for p in app.placements
    ]
    current = request.COOKIES.get(ENV_COOKIE, "")
    if wants_json(request):
        body = {"app": app.name, "choose": [{k: v for k, v in row.items() if k != "href"} for row in rows]}
        response = HttpResponse(json.dumps({**body, "notice": notice}), status=300, content_type="application/json")
    else:
        context = {"app": app, "rows": rows, "notice": notice, "current": current, "back_url": back_url_for(app)}
        html = render_to_string("apps_registry/proxy/chooser.html", context)
        response = HttpResponse(html, content_type="text/html; charset=utf-8")
    response["Cache-Control"] = "no-store"
    return response
