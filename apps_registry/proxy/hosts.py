"""Per-app origins on the supervisor: which app a request's ``Host`` names, if any.

With ``APPS_DOMAIN=apps.example.com``, ``crm.apps.example.com`` is app ``crm`` (a name's ``_``
written ``-`` in its label) and an app's custom domain (``Application.domain``) is that app.
Such a request is the app's whatever its path: ``/admin/`` there is the app's admin, and the
supervisor's admin, API and health routes are not served on those hosts. The middleware runs
before anything else that reads the Host (right after ``forwarded``) and answers app hosts
itself, through the proxy view, so that:

- a custom domain, which is in no ``ALLOWED_HOSTS``, is accepted once the registry names it,
  and Django's host check never sees it;
- nothing of the supervisor's session, CSRF or messages machinery runs for an app host.

The app's static files (``/static/``) come from this process's own collected files, as in
path mode. ``domain_check`` answers a TLS terminator's "do we serve this host?" (Caddy's
on-demand TLS ``ask``): 200 or 404.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import MiddlewareNotUsed
from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect
from django.http.request import split_domain_port, validate_host
from whitenoise.middleware import WhiteNoiseMiddleware

from apps_registry.names import host_problem, is_under, name_from_label, normalise_host
from apps_registry.proxy import pages, routing
from apps_registry.proxy.routing import Mount
from apps_registry.proxy.view import AppProxyView

# An app host's answer gets what the supervisor's own security middleware would have added
# in path mode (the app's own HSTS and X-Frame-Options are dropped by response_rules).
_DEFAULT_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}


def app_named_by(domain: str, apps_domain: str) -> str | None:
    """``sales_eu`` for ``sales-eu.<apps_domain>``; None for the bare domain, deeper names or
    labels no app name maps to."""
    label = domain[: -len(apps_domain)].rstrip(".")
    return name_from_label(label) if label and "." not in label else None


class AppHostMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        if settings.APP_MODE != "supervisor":
            raise MiddlewareNotUsed
        self.get_response = get_response
        config = settings.APP_CONFIG
        self.apps_domain = config.apps_domain
        # The supervisor's own names: never looked up as custom domains (no query per request).
        self.own_hosts = [h for h in config.allowed_hosts if h != "*" and h != f".{self.apps_domain}"]
        self.view = AppProxyView.as_view()
        self.static = WhiteNoiseMiddleware(lambda request: pages.not_found(request, None))

    def __call__(self, request: HttpRequest) -> HttpResponse:
        raw_host = request.META.get("HTTP_HOST", "")
        domain, _port = split_domain_port(raw_host)
        if not domain:
            return self.get_response(request)  # no or malformed Host: Django's own 400
        if self.apps_domain and is_under(domain, self.apps_domain):
            name = app_named_by(domain, self.apps_domain)
            if name is None:
                return _secured(request, pages.not_found(request, None))
            return self._serve(request, name, raw_host)
        if validate_host(domain, self.own_hosts):
            return self.get_response(request)
        name = routing.app_for_domain(domain)
        if name is None:
            return self.get_response(request)  # Django refuses it unless ALLOWED_HOSTS has it
        return self._serve(request, name, raw_host)

    def _serve(self, request: HttpRequest, name: str, host: str) -> HttpResponse:
        if settings.SECURE_SSL_REDIRECT and not request.is_secure():
            return HttpResponsePermanentRedirect(f"https://{host}{request.get_full_path()}")
        path = request.path_info
        if path.startswith(settings.STATIC_URL):
            return _secured(request, self.static(request))
        rest = routing.split_host_path(path, request.META.get("RAW_URI"))
        if rest is None:
            return _secured(request, pages.not_found(request, None))
        return _secured(request, self.view(request, mount=Mount(name=name, rest=rest, host=host, prefix="/")))


def _secured(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    for header, value in _DEFAULT_HEADERS.items():
        response.headers.setdefault(header, value)
    if settings.SECURE_HSTS_SECONDS and request.is_secure():
        # Without includeSubDomains: an app host's answer speaks for that host alone.
        response.headers.setdefault("Strict-Transport-Security", f"max-age={settings.SECURE_HSTS_SECONDS}")
    return response


def domain_check(request: HttpRequest) -> HttpResponse:
    """``GET /internal/domain-check?domain=<host>``: 200 when ``host`` is an app's (its custom
    domain, or ``<label>.<APPS_DOMAIN>`` of an existing app), 404 otherwise, 400 for a missing
    or malformed one. For Caddy's on-demand TLS ``ask``: no certificate for hosts we do not serve."""
    domain = normalise_host(request.GET.get("domain", ""))
    if not domain or host_problem(domain):
        return HttpResponse("domain: a host name is required\n", status=400, content_type="text/plain")
    apps_domain = settings.APP_CONFIG.apps_domain
    if apps_domain and is_under(domain, apps_domain):
        name = app_named_by(domain, apps_domain)
        known = name is not None and routing.route_for(name) is not None
    else:
        known = routing.app_for_domain(domain) is not None
    if not known:
        return HttpResponse("unknown\n", status=404, content_type="text/plain")
    return HttpResponse("ok\n", content_type="text/plain")
