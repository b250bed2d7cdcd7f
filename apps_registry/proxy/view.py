"""``/apps/<name>/…`` on the supervisor: a django-revproxy view that forwards to the worker
environment running the app, with the gaps of revproxy 0.13 closed.

What this adds to ``revproxy.views.ProxyView``:
- routing by app name from the registry (``proxy_routing``), never a host from the request;
- an app at ``/apps/<name>/`` here or at ``/`` of its own host (a ``Mount`` from ``hosts.py``):
  the worker always sees ``/apps/<name>/…``, told ``X-Forwarded-App-Root: /`` in the second
  case; with ``APPS_DOMAIN`` set, ``/apps/<name>/…`` here answers 307 to the app's host;
- one urllib3 PoolManager per environment sized ``PROXY_POOL_SIZE``, connect and read
  timeouts, no retries of non-idempotent requests, and upstream failures turned into 502/504
  pages instead of a 500 with a traceback;
- request headers filtered: hop-by-hop headers, ``Authorization`` and every cookie but the
  app's own (``app_<name>_…``) stay here; ``X-Forwarded-For`` is appended to, and
  ``X-Forwarded-Host``/``-Proto`` are set (the worker trusts them only from TRUSTED_PROXY_IPS);
- request bodies stream to the worker (no whole-body read), refused with 413 beyond
  ``PROXY_MAX_UPLOAD_BYTES``; a body the client cannot deliver is a 400, logged at INFO;
  responses stream, HTML included (revproxy buffers HTML for its diazo theming, which this
  view does not do), so memory per request stays bounded whatever the worker sends;
- at most ``PROXY_APP_CONCURRENCY`` requests per app and ``PROXY_CONCURRENCY`` in all in
  flight per process (``admission``), beyond which a fast 503 with ``Retry-After``;
- a GET, HEAD or OPTIONS whose environment refused or dropped the connection before
  answering is retried once on another environment running the app, and the remembered
  choice moves there (``routing.note_unreachable``);
- the app's ``Set-Cookie`` limited to its own cookies and path; absolute ``Location`` headers
  pointing at the worker rewritten to the supervisor's host, to any other host refused (502);
  headers that act on the whole origin (``Service-Worker-Allowed``, ``Clear-Site-Data``, HSTS,
  ``X-Frame-Options``) and ``Refresh`` to another host dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import urllib3
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.http.request import split_domain_port
from django.views.generic import View
from revproxy.response import get_streaming_amt
from revproxy.utils import MIN_STREAMING_LENGTH
from revproxy.views import QUOTE_SAFE, ProxyView
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from apps_registry.models import AppStatus
from apps_registry.names import host_label
from apps_registry.observability import metrics
from apps_registry.proxy import pages, routing
from apps_registry.proxy import response_rules as rules
from apps_registry.proxy.admission import GATE, Ticket
from apps_registry.proxy.routing import ENV_COOKIE, ENV_PARAM, AppRoute, Mount, Placement
from supervisor_site.client_input import ClientInputError
from supervisor_site.forwarded import PEER_ADDR
from supervisor_site.unavailable import retry_after

log = logging.getLogger(__name__)

# Request headers that describe this hop only (RFC 9110 §7.6.1), or that are the supervisor's.
_DROPPED_REQUEST_HEADERS = frozenset(
    {
        "HTTP_CONNECTION",
        "HTTP_KEEP_ALIVE",
        "HTTP_TE",
        "HTTP_TRAILER",
        "HTTP_TRANSFER_ENCODING",
        "HTTP_UPGRADE",
        "HTTP_HOST",
        "HTTP_AUTHORIZATION",
        "HTTP_COOKIE",
        "HTTP_X_FORWARDED_FOR",
        "HTTP_X_FORWARDED_HOST",
        "HTTP_X_FORWARDED_PROTO",
        "HTTP_X_REAL_IP",
        "HTTP_X_FORWARDED_APP_ROOT",  # the proxy's own word to the worker, never a client's
        "HTTP_FORWARDED",
        "HTTP_EXPECT",  # the supervisor's server already answered any "100-continue"
    }
)
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Retried once on another environment when the first refused or dropped the connection
# before answering: safe methods only, whose repetition changes nothing anywhere.
_RETRIED_ELSEWHERE = frozenset({"GET", "HEAD", "OPTIONS"})
# The response header that says a request was moved off an unreachable environment.
FAILOVER_HEADER = "X-App-Supervisor-Failover"
_STREAM_CHUNK = 64 * 1024
# Tells the worker the app is served at "/" of its own host (worker_agent/web/middleware.py
# believes it from TRUSTED_PROXY_IPS only).
APP_ROOT_HEADER = "X-Forwarded-App-Root"


class _Pools:
    """One PoolManager per environment, rebuilt when its target URL changes in the registry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[str, tuple[str, urllib3.PoolManager]] = {}

    def get(self, placement: Placement) -> urllib3.PoolManager:
        entry = self._pools.get(placement.environment)
        if entry is not None and entry[0] == placement.target_url:
            return entry[1]
        config = settings.APP_CONFIG
        with self._lock:
            entry = self._pools.get(placement.environment)
            if entry is None or entry[0] != placement.target_url:
                manager = urllib3.PoolManager(
                    num_pools=2,
                    maxsize=config.proxy_pool_size,
                    block=False,
                    timeout=urllib3.Timeout(connect=config.proxy_connect_timeout, read=config.proxy_read_timeout),
                    retries=False,
                )
                if entry is not None:
                    entry[1].clear()
                entry = (placement.target_url, manager)
                self._pools[placement.environment] = entry
        return entry[1]


POOLS = _Pools()


def _retries(method: str, has_body: bool) -> urllib3.Retry | bool:
    """One retry on a failed connection for idempotent bodiless requests (a pooled keep-alive
    connection the worker just closed); none at all otherwise, so a POST is never sent twice."""
    if method in _IDEMPOTENT and not has_body:
        return urllib3.Retry(total=1, connect=1, read=0, status=0, other=0, redirect=False, raise_on_status=False)
    return False


def _forwarded_cookie_header(request: HttpRequest, name: str) -> str:
    """Only the app's own cookies go to the worker: never the supervisor's session, CSRF or
    chooser cookie, nor another app's."""
    prefix = rules.app_cookie_prefix(name)
    raw = request.META.get("HTTP_COOKIE", "")
    if not raw:
        return ""
    kept = [part.strip() for part in raw.split(";") if part.strip().startswith(prefix)]
    return "; ".join(kept)


def _peer_address(request: HttpRequest) -> str:
    """The address of the connection itself (kept by the forwarded-headers middleware)."""
    return request.META.get(PEER_ADDR) or request.META.get("REMOTE_ADDR", "") or "unknown"


class AppProxyView(ProxyView):
    """The supervisor's ``/apps/`` route."""

    http_method_names = ["get", "post", "put", "patch", "delete", "head", "options"]

    def __init__(self, **kwargs) -> None:
        # revproxy's __init__ logs "ProxyView created" at INFO for every request (a view
        # instance per request) and compiles rewrite rules we do not use: skip it.
        View.__init__(self, **kwargs)
        self.log = log

    def dispatch(self, request: HttpRequest, *args, mount: Mount | None = None, **kwargs) -> HttpResponse:
        """``mount`` is given by the host router (``hosts.py``) for an app on its own host;
        without it the request is ``/apps/<name>/…`` on the supervisor's host."""
        if mount is None:
            parsed = routing.split_app_path(request.path_info, request.META.get("RAW_URI"))
            if parsed is None:
                return pages.not_found(request, None)
            name, rest = parsed
            query = request.META.get("QUERY_STRING", "")
            suffix = f"?{routing.safe_query(query)}" if query else ""
            apps_domain = settings.APP_CONFIG.apps_domain
            if apps_domain:
                # Per-app origins are on: the app is not served on the supervisor's origin
                # (its scripts would run beside the operator's admin), old links lead to its host.
                return _to_own_host(request, name, rest, suffix, apps_domain)
            if request.path_info == f"/apps/{name}":
                return HttpResponseRedirect(f"/apps/{name}/" + suffix)
            mount = Mount(name=name, rest=rest, host=request.get_host(), prefix=f"/apps/{name}/")
        name, rest = mount.name, mount.rest
        route = routing.route_for(name)
        if route is None:
            return pages.not_found(request, name)

        query = request.META.get("QUERY_STRING", "")
        requested = request.GET.get(ENV_PARAM) if ENV_PARAM in query else None
        if requested == "":  # ?env= asks for the chooser explicitly
            return pages.chooser(request, route, "")
        decision = routing.decide(route, requested, request.COOKIES.get(ENV_COOKIE))
        if decision.kind == "switching":
            route, decision = _await_switch(name, requested, request.COOKIES.get(ENV_COOKIE))
            if route is None:
                return pages.not_found(request, name)
        if decision.kind == "choose":
            return pages.chooser(request, route, decision.notice)
        if decision.kind == "offline":
            return pages.bad_gateway(request, route, decision.environments, "is offline")
        if decision.kind == "unavailable":
            status = decision.status
            if status == AppStatus.STOPPED:
                status = routing.on_stopped_app_visit(route.as_application()) or status
            return pages.unavailable(request, route, status, retry_after(status))

        placement = decision.placement
        assert placement is not None
        if decision.remember and request.method in ("GET", "HEAD"):
            # Remember the choice, then show the same page without the supervisor's parameter.
            clean = routing.query_without_env(query)
            response = HttpResponseRedirect(request.path + (f"?{routing.safe_query(clean)}" if clean else ""))
            self._remember(response, mount, placement.environment)
            return response
        config = settings.APP_CONFIG
        ticket = GATE.enter(name, config.proxy_app_concurrency, config.proxy_concurrency)
        if ticket is None:
            metrics.observe_proxy_request(name, placement.environment, 503, 0.0)
            return pages.busy(request, route, retry_after("busy"))
        try:
            response, served_by = self._forward(request, route, mount, placement, ticket)
        except BaseException:
            ticket.release()
            raise
        if not served_by:  # no environment answered: the error page, nothing to remember
            return response
        # Moved off an unreachable environment (before or after trying it): the remembered
        # choice follows, and the answer says so.
        moved_from = decision.moved_from or (placement.environment if served_by != placement.environment else "")
        if decision.remember or moved_from:
            self._remember(response, mount, served_by)
        if moved_from:
            response[FAILOVER_HEADER] = f"{moved_from} unreachable; served by {served_by}"
        return response

    @staticmethod
    def _remember(response: HttpResponse, mount: Mount, environment: str) -> None:
        # Host-only (no Domain): on an app's own host it reaches that host alone.
        response.set_cookie(
            ENV_COOKIE,
            environment,
            max_age=30 * 86400,
            path=mount.prefix,
            httponly=True,
            samesite="Lax",
            secure=settings.SESSION_COOKIE_SECURE,
        )

    # --- the upstream request ------------------------------------------------------------

    def _upstream_headers(self, request: HttpRequest, mount: Mount, placement: Placement) -> dict[str, str]:
        name = mount.name
        meta = request.META
        listed = {
            "HTTP_" + token.strip().upper().replace("-", "_")
            for token in meta.get("HTTP_CONNECTION", "").split(",")
            if token.strip()
        }
        headers: dict[str, str] = {}
        for key, value in meta.items():
            if not key.startswith("HTTP_") or key in _DROPPED_REQUEST_HEADERS or key in listed:
                continue
            if key.startswith("HTTP_PROXY_"):
                continue
            headers[key[5:].replace("_", "-").title()] = value
        if meta.get("CONTENT_TYPE"):
            headers["Content-Type"] = meta["CONTENT_TYPE"]
        if meta.get("CONTENT_LENGTH"):
            headers["Content-Length"] = meta["CONTENT_LENGTH"]
        cookies = _forwarded_cookie_header(request, name)
        if cookies:
            headers["Cookie"] = cookies
        prior = meta.get("HTTP_X_FORWARDED_FOR", "").strip()
        client = _peer_address(request)
        headers["X-Forwarded-For"] = f"{prior}, {client}" if prior else client
        headers["X-Forwarded-Host"] = mount.host
        headers["X-Forwarded-Proto"] = request.scheme or "http"
        if mount.own_host:
            # The worker then builds the app's URLs and cookies rooted at "/" (worker_agent/web).
            headers[APP_ROOT_HEADER] = "/"
        return headers

    def _forward(
        self, request: HttpRequest, route: AppRoute, mount: Mount, placement: Placement, ticket: Ticket
    ) -> tuple[HttpResponse, str]:
        """The worker's answer, and the environment that gave it ('' when none did). The
        ticket is released when the answer has been sent (streamed ones: when they close)."""
        name = route.name
        started = time.monotonic()
        config = settings.APP_CONFIG
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            ticket.release()
            return pages.simple(request, 400, "Bad request", "The Content-Length header is not a number."), ""
        if length > config.proxy_max_upload_bytes:
            ticket.release()
            return pages.too_large(request, config.proxy_max_upload_bytes), ""
        if length < 0:
            ticket.release()
            return pages.simple(request, 400, "Bad request", "The Content-Length header is negative."), ""

        path = quote(f"/apps/{name}/{mount.rest}".encode(), QUOTE_SAFE)
        query = routing.safe_query(routing.query_without_env(request.META.get("QUERY_STRING", "")))
        target = path + (f"?{query}" if query else "")
        headers = self._upstream_headers(request, mount, placement)
        body: HttpRequest | bytes | None = request if length else None
        method = request.method or "GET"
        try:
            if not length and "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
                # Django reads no body without Content-Length; the server de-chunks it as it
                # is read, so read it here (bounded) and send it with a length.
                data = request.META["wsgi.input"].read(config.proxy_max_upload_bytes + 1)
                if len(data) > config.proxy_max_upload_bytes:
                    ticket.release()
                    return pages.too_large(request, config.proxy_max_upload_bytes), ""
                headers["Content-Length"] = str(len(data))
                body = data or None
            try:
                upstream = self._open(method, placement, target, body, headers)
            except HTTPError as error:
                other = self._retry_target(route, placement, method, body, error)
                if other is None:
                    raise
                log.info(
                    "proxy %s: %s %s (%s); retrying %s on %s",
                    name,
                    placement.environment,
                    "refused the connection" if _refused(error) else "dropped the connection",
                    _reason(error),
                    method,
                    other.environment,
                )
                placement = other
                headers = self._upstream_headers(request, mount, placement)
                upstream = self._open(method, placement, target, body, headers)
        except ClientInputError as error:
            # The client's body broke while it was read here or sent on: nobody to answer.
            ticket.release()
            log.info("proxy %s: bad request body from %s: %s", name, _peer_address(request), error)
            return pages.bad_request_body(request), ""
        except HTTPError as error:
            ticket.release()
            if _refused(error) or _dropped(error):
                routing.note_unreachable(placement.environment)
            response = self._upstream_failed(request, name, placement, error)
            _observe(name, placement, response.status_code, started)
            return response, ""
        routing.note_reachable(placement.environment)
        response = self._response(request, mount, placement, upstream, ticket)
        _observe(name, placement, response.status_code, started)
        return response, placement.environment

    @staticmethod
    def _open(
        method: str, placement: Placement, target: str, body: HttpRequest | bytes | None, headers: dict[str, str]
    ) -> urllib3.BaseHTTPResponse:
        return POOLS.get(placement).urlopen(
            method,
            placement.target_url + target,
            body=body,
            headers=headers,
            redirect=False,
            retries=_retries(method, body is not None),
            decode_content=False,
            preload_content=False,
        )

    @staticmethod
    def _retry_target(
        route: AppRoute, placement: Placement, method: str, body: object, error: HTTPError
    ) -> Placement | None:
        """Where to retry a request ``placement`` refused or dropped before answering: only a
        bodiless safe request, once, on another environment that can serve the app now."""
        if method not in _RETRIED_ELSEWHERE or body is not None or not (_refused(error) or _dropped(error)):
            return None
        routing.note_unreachable(placement.environment)
        return routing.alternative(route, placement.environment)

    def _upstream_failed(self, request: HttpRequest, name: str, placement: Placement, error: Exception) -> HttpResponse:
        reason = _reason(error)
        log.warning("proxy %s → %s failed: %s", name, placement.environment, reason)
        route = routing.AppRoute(pk=0, name=name, display_name=name, options={})
        # NewConnectionError subclasses ConnectTimeoutError in urllib3 2: test it first.
        if isinstance(reason, NewConnectionError):
            return pages.bad_gateway(request, route, (placement.environment,), "refuses connections")
        config = settings.APP_CONFIG
        if isinstance(reason, ConnectTimeoutError):
            return pages.gateway_timeout(request, route, placement.environment, config.proxy_connect_timeout)
        if isinstance(reason, ReadTimeoutError):
            return pages.gateway_timeout(request, route, placement.environment, config.proxy_read_timeout)
        return pages.bad_gateway(request, route, (placement.environment,), "did not answer properly")

    # --- the response -----------------------------------------------------------------------

    def _response(
        self,
        request: HttpRequest,
        mount: Mount,
        placement: Placement,
        upstream: urllib3.BaseHTTPResponse,
        ticket: Ticket,
    ) -> HttpResponse:
        name = mount.name
        upstream_headers = upstream.headers
        set_cookies = upstream_headers.getlist("set-cookie")
        upstream_headers.discard("set-cookie")
        listed = {t.strip().lower() for t in upstream_headers.get("Connection", "").split(",") if t.strip()}
        self._set_content_type(request, upstream)
        content_type = upstream_headers.get("Content-Type")
        if _streamed(upstream):
            response: HttpResponse | StreamingHttpResponse = StreamingHttpResponse(
                _Body(upstream, get_streaming_amt(upstream) if content_type else _STREAM_CHUNK, name, ticket),
                status=upstream.status,
                content_type=content_type,
            )
        else:
            try:
                content = upstream.data or b""
            except HTTPError as error:
                upstream.close()
                return self._upstream_failed(request, name, placement, error)
            finally:
                upstream.release_conn()
                ticket.release()
            response = HttpResponse(content, status=upstream.status, content_type=content_type)
        # Like revproxy's set_response_headers, but repeated headers (Vary, Link…) are joined
        # instead of the last one winning, and Connection-listed headers are dropped too.
        for header in {key.lower(): key for key in upstream_headers}.values():
            if not rules.passes(header.lower(), listed):
                continue
            response[header] = ", ".join(upstream_headers.getlist(header))
        refresh = upstream_headers.get("Refresh")
        if refresh and rules.foreign(mount, rules.refresh_target(refresh), placement):
            del response["Refresh"]
        location = upstream_headers.get("Location")
        if location:
            if rules.foreign(mount, location, placement):
                log.info("proxy %s: redirect to %s refused (another site)", name, urlsplit(location).netloc)
                response.close()  # a streamed body gives back its connection and ticket
                return pages.simple(
                    request,
                    502,
                    "Redirect refused",
                    "The application tried to send you to another site; the supervisor does not relay that.",
                )
            response["Location"] = rules.public_location(request, mount, location, placement)
        for raw in set_cookies:
            rules.pass_cookie(response, raw, mount)
        return response


# How long a request that finds its app between the two sides of a move (running, held out of
# the route, nowhere else serving) waits for the switch, re-reading the route (uncached) at
# SWITCH_POLL; then it gets the usual answer for what it finds.
SWITCH_WAIT = 3.0
SWITCH_POLL = 0.05


def _await_switch(name: str, requested: str | None, remembered: str | None) -> tuple[AppRoute | None, routing.Decision]:
    log.info("proxy %s: held out of its route by a move; waiting up to %g s for the switch", name, SWITCH_WAIT)
    deadline = time.monotonic() + SWITCH_WAIT
    while True:
        time.sleep(SWITCH_POLL)
        route = routing.load_route(name)
        if route is None:
            return None, routing.Decision("unavailable", status=AppStatus.STOPPED)
        decision = routing.decide(route, requested, remembered)
        if decision.kind != "switching":
            return route, decision
        if time.monotonic() >= deadline:
            return route, routing.Decision("unavailable", status=AppStatus.STARTING)


def _to_own_host(request: HttpRequest, name: str, rest: str, suffix: str, apps_domain: str) -> HttpResponse:
    """A 307 (the method and body kept) from ``/apps/<name>/rest`` here to ``/rest`` on the
    app's own host, on the port this request came to."""
    _host, port = split_domain_port(request.get_host())
    host = f"{host_label(name)}.{apps_domain}" + (f":{port}" if port else "")
    response = HttpResponseRedirect(f"{request.scheme}://{host}/{quote(rest, QUOTE_SAFE)}{suffix}")
    response.status_code = 307
    return response


def _streamed(upstream: urllib3.BaseHTTPResponse) -> bool:
    """Everything streams but a small answer of known length: HTML too, unlike revproxy's
    ``should_stream``, which buffers HTML whole (for diazo theming, unused here), so that a
    worker's 400 MiB page would take 400 MiB of the supervisor's memory."""
    try:
        length = int(upstream.headers.get("Content-Length", ""))
    except ValueError:
        return True
    return length > MIN_STREAMING_LENGTH


class _Body:
    """The worker's body, chunk by chunk; a stalled or broken worker ends the response early
    (the client sees it cut short against Content-Length) instead of raising a traceback.
    Django calls ``close()`` when the response is done — also when the client left before
    the first chunk, where a generator's ``finally`` would never run — which returns the
    upstream connection and the admission ticket."""

    def __init__(self, upstream: urllib3.BaseHTTPResponse, amount: int, name: str, ticket: Ticket) -> None:
        self._upstream = upstream
        self._amount = amount
        self._name = name
        self._ticket = ticket
        self._finished = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._upstream.stream(self._amount, decode_content=False)
            self._finished = True
        except HTTPError as error:
            log.warning("proxy %s: response body cut short: %s", self._name, error)

    def close(self) -> None:
        try:
            if not self._finished:
                self._upstream.close()
            self._upstream.release_conn()
        finally:
            self._ticket.release()


def _reason(error: Exception) -> Exception:
    return error.reason if isinstance(error, MaxRetryError) and error.reason is not None else error


def _refused(error: Exception) -> bool:
    """The environment did not take the connection (refused, or no answer to connecting)."""
    return isinstance(_reason(error), ConnectTimeoutError)  # NewConnectionError is one too


def _dropped(error: Exception) -> bool:
    """The environment closed or reset the connection before any answer."""
    return isinstance(_reason(error), ProtocolError)


def _observe(name: str, placement: Placement, status: int, started: float) -> None:
    metrics.observe_proxy_request(name, placement.environment, status, time.monotonic() - started)
