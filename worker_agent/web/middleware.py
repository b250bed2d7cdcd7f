"""Serves hosted apps under ``/apps/<name>/`` in processes that host apps (standalone, worker).

Per request: validate the name, take one of the process's ``HOSTED_CONCURRENCY`` places, at
most ``HOSTED_APP_CONCURRENCY`` of them for one app (``places.py``: a request beyond them waits
for one, at most ``ADMISSION_WAIT`` seconds, then gets a 503 busy page; under gevent, where a
connection costs no thread, this is what bounds the database connections a process opens),
count the request as served (``hosting.serving``: a shared
lock a stop waits for), look the app up in the local state file (a ``stat()``; the
file is re-read only when it changed), answer 404/503 unless the app runs here, otherwise
route the request to the app: its database alias for every ORM query (``current_app_alias``),
its own URL table (``request.urlconf``) and, further down, its own session cookie. In
supervisor mode this middleware removes itself; ``/apps/`` is the proxy's there.

On its own host (``APPS_DOMAIN`` or a custom domain) the browser sees the app at ``/``; the
supervisor's proxy still sends ``/apps/<name>/x`` and adds ``X-Forwarded-App-Root: /``.
Believed from ``TRUSTED_PROXY_IPS`` only, it makes this request ``/x`` to Django
(``path_info``), with the app's URL table rooted at ``/``: ``reverse()``, the admin's links and
``?next=``, redirects and the session cookie's path all come out ``/``-rooted, with nothing
to rewrite in HTML. The forwarded host, which the supervisor validated, is vouched for
(``supervisor_site.vouched_hosts``) so Django's host and CSRF origin checks accept it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from django.conf import settings
from django.core.exceptions import MiddlewareNotUsed
from django.db import connections
from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect
from django.http.request import split_domain_port
from django.utils.module_loading import import_string

from apps_registry.names import is_valid_name
from apps_registry.observability.metrics import observe_hosted_request
from supervisor_site.forwarded import FROM_TRUSTED_PROXY
from supervisor_site.vouched_hosts import vouch
from worker_agent.hosting import app_databases, app_figures, app_logs, local_state, serving
from worker_agent.hosting.db_router import current_app_alias
from worker_agent.web import app_sites, error_pages
from worker_agent.web.places import Places

log = logging.getLogger(__name__)

APPS_PREFIX = "/apps/"
# The supervisor's proxy: "this app is served at / of the forwarded host".
APP_ROOT_META = "HTTP_X_FORWARDED_APP_ROOT"
# Which environment served a hosted response (for operators and support, not for security).
ENVIRONMENT_HEADER = "X-App-Environment"
HOSTING_MODES = ("standalone", "worker")
# How long a hosted request waits for a place before it is refused as busy: below the
# supervisor's PROXY_READ_TIMEOUT (30 s by default), so the client gets this process's answer.
ADMISSION_WAIT = 10.0


def on_stopped_app_visit(name: str) -> str | None:
    """Called when a request reaches an app that is stopped or unknown here.

    Returns the status to show instead (e.g. ``"queued"`` once a start on first visit is
    requested), or None to answer with the app's own status (stopped → 503, unknown → 404).
    Standalone queues a start for apps that start on first visit; a worker leaves starting to
    the supervisor.
    """
    if settings.APP_MODE != "standalone":
        return None
    # The registry's handler, named in settings: hosting does not import the control plane.
    return import_string(settings.APP_FIRST_VISIT_HANDLER)(name)


def _served_at_root(request: HttpRequest) -> bool:
    meta = request.META
    return bool(meta.get(FROM_TRUSTED_PROXY)) and meta.get(APP_ROOT_META) == "/"


def _record_request(request: HttpRequest, route: _Route, name: str, status: int, started: float) -> None:
    """The request's line: method, path (never the query string, which may hold secrets),
    status and duration; and the request counted in the app's figures."""
    elapsed_ms = (time.monotonic() - started) * 1000
    app_figures.record(name, status, elapsed_ms, route.db)
    observe_hosted_request(name, status, elapsed_ms / 1000)
    level = "error" if status >= 500 else "warning" if status >= 400 else "info"
    app_logs.record(name, level, f"{request.method} {request.path} {status} {elapsed_ms:.0f}ms")


def _record_exception(request: HttpRequest, name: str, error: Exception) -> None:
    """One error line per request and exception: its type and first line, no traceback."""
    if getattr(request, "_app_log_exception", None) is error:
        return
    request._app_log_exception = error
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    app_logs.record(name, "error", f"{request.method} {request.path} raised {type(error).__name__}: {first}")


class _Route:
    __slots__ = ("alias", "db", "root_urlconf", "stamp", "urlconf")

    def __init__(
        self,
        stamp: tuple,
        db: app_databases.AppDatabase,
        urlconf: app_sites.AppUrlConf,
        root_urlconf: app_sites.AppUrlConf,
    ):
        self.stamp = stamp
        self.db = db
        self.alias = db.alias
        self.urlconf = urlconf
        self.root_urlconf = root_urlconf


class HostedAppMiddleware:
    def __init__(self, get_response):
        if settings.APP_MODE not in HOSTING_MODES:
            raise MiddlewareNotUsed
        self.get_response = get_response
        self._routes: dict[str, _Route] = {}
        self._lock = threading.Lock()
        config = settings.APP_CONFIG
        self._places = Places(config.hosted_concurrency, config.hosted_app_concurrency)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path_info
        if not path.startswith(APPS_PREFIX):
            return self.get_response(request)
        name, slash, _ = path[len(APPS_PREFIX) :].partition("/")
        if not is_valid_name(name):
            return error_pages.not_found(request, None)
        if not slash:
            return HttpResponsePermanentRedirect(f"{APPS_PREFIX}{name}/")

        if not self._places.take(name, ADMISSION_WAIT):
            log.warning("app %s: no place free after %g s (HOSTED_[APP_]CONCURRENCY)", name, ADMISSION_WAIT)
            return error_pages.unavailable(request, name, "busy")
        try:
            return self._serve(request, path, name)
        finally:
            self._places.give_back(name)

    def _serve(self, request: HttpRequest, path: str, name: str) -> HttpResponse:
        with contextlib.ExitStack() as in_flight:
            # Counted as served before the state is read: a stop waits for this request
            # unless it reads the new state (serving.py says why the order matters).
            try:
                in_flight.enter_context(serving.serving(name))
            except serving.Busy:
                log.warning("app %s: not admitted, its serving lock stayed held", name)
                return error_pages.unavailable(request, name, "busy")
            entry = local_state.app_entry(name)
            status = entry.get("status") if entry else None
            if status != "running":
                in_flight.close()  # a refused request must not hold a stop up
                if status in (None, "stopped"):
                    status = on_stopped_app_visit(name) or status
                if status is None:
                    return error_pages.not_found(request, name)
                return error_pages.unavailable(request, name, status)

            try:
                route = self._route(name, entry)
            except Exception:
                log.exception("cannot serve app %s", name)
                return error_pages.unavailable(request, name, "error")
            token = current_app_alias.set(route.alias)
            request.hosted_app = name
            if _served_at_root(request):
                domain, _port = split_domain_port(request.META.get("HTTP_HOST", ""))
                in_flight.enter_context(vouch(domain))
                request.path_info = request.path = "/" + path[len(APPS_PREFIX) + len(name) + 1 :]
                request.urlconf = route.root_urlconf
                request.hosted_app_root = "/"
            else:
                request.urlconf = route.urlconf
                request.hosted_app_root = f"{APPS_PREFIX}{name}/"
            started = time.monotonic()
            try:
                response = self.get_response(request)
            except Exception as error:
                # Raised past Django's own handling (a middleware, or the error page itself
                # failing): the outer handler answers 500; the app's log still says why.
                _record_exception(request, name, error)
                _record_request(request, route, name, 500, started)
                raise
            finally:
                current_app_alias.reset(token)
                # The view is done: its database connections go with its place, not when the
                # body has been sent (a slow reader would hold one outside the bound). Those
                # kept on purpose (CONN_MAX_AGE under gthread) stay; a later query reconnects.
                for connection in connections.all(initialized_only=True):
                    connection.close_if_unusable_or_obsolete()
            response[ENVIRONMENT_HEADER] = settings.APP_CONFIG.environment_name
            _record_request(request, route, name, response.status_code, started)
            return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        """A hosted view raised: one line with the exception's type (the traceback stays in
        this process's own log); Django still answers 500 as usual."""
        name = getattr(request, "hosted_app", None)
        if name:
            _record_exception(request, name, exception)

    def _route(self, name: str, entry: dict) -> _Route:
        """The app's alias and URLs, refreshed whenever its state entry was rewritten by a start."""
        stamp = (entry.get("updated_at"), entry.get("generation"))
        route = self._routes.get(name)
        if route is not None and route.stamp == stamp:
            return route
        with self._lock:
            route = self._routes.get(name)
            if route is not None and route.stamp == stamp:
                return route
            spec = entry.get("spec") or {}
            options = spec.get("options") or {}
            modules = app_databases.modules_of(spec)
            db = app_databases.describe(name, options)
            app_databases.register(db, modules)
            # The app may have been dropped and created again since: its ids are new.
            app_databases.forget_cached_ids(db.alias)
            title = str(spec.get("display_name") or name)
            route = _Route(
                stamp,
                db,
                app_sites.urlconf_for(name, title, modules, f"{APPS_PREFIX}{name}/"),
                app_sites.urlconf_for(name, title, modules, "/"),
            )
            self._routes[name] = route
            return route
