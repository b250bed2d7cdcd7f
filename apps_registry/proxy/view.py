"""``/apps/<name>/…`` on the supervisor: a django-revproxy view that forwards to the worker
environment running the app, with the gaps of revproxy 0.13 closed.

What this adds to ``revproxy.views.ProxyView``:
- routing by app name from the registry (``proxy_routing``), never a host from the request;
- one urllib3 PoolManager per environment sized ``PROXY_POOL_SIZE``, connect and read
  timeouts, no retries of non-idempotent requests, and upstream failures turned into 502/504
  pages instead of a 500 with a traceback;
- request headers filtered: hop-by-hop headers, ``Authorization`` and every cookie but the
  app's own (``app_<name>_…``) stay here; ``X-Forwarded-For`` is appended to, and
  ``X-Forwarded-Host``/``-Proto`` are set (the worker trusts them only from TRUSTED_PROXY_IPS);
- request bodies stream to the worker (no whole-body read), refused with 413 beyond
  ``PROXY_MAX_UPLOAD_BYTES``; responses stream (except small ones and HTML, as revproxy does);
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
from django.views.generic import View
from revproxy.response import get_streaming_amt
from revproxy.utils import should_stream
from revproxy.views import QUOTE_SAFE, ProxyView
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    NewConnectionError,
    ReadTimeoutError,
)

from apps_registry.models import AppStatus
from apps_registry.observability import metrics
from apps_registry.proxy import pages, routing
from apps_registry.proxy import response_rules as rules
from apps_registry.proxy.routing import ENV_COOKIE, ENV_PARAM, Placement
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
        "HTTP_FORWARDED",
        "HTTP_EXPECT",  # the supervisor's server already answered any "100-continue"
    }
)
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_STREAM_CHUNK = 64 * 1024


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

    def dispatch(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        parsed = routing.split_app_path(request.path_info, request.META.get("RAW_URI"))
        if parsed is None:
            return pages.not_found(request, None)
        name, rest = parsed
        if request.path_info == f"/apps/{name}":
            query = request.META.get("QUERY_STRING", "")
            return HttpResponseRedirect(f"/apps/{name}/" + (f"?{routing.safe_query(query)}" if query else ""))
        route = routing.route_for(name)
        if route is None:
            return pages.not_found(request, name)

        query = request.META.get("QUERY_STRING", "")
        requested = request.GET.get(ENV_PARAM) if ENV_PARAM in query else None
        if requested == "":  # ?env= asks for the chooser explicitly
            return pages.chooser(request, route, "")
        decision = routing.decide(route, requested, request.COOKIES.get(ENV_COOKIE))
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
            self._remember(response, name, placement.environment)
            return response
        response = self._forward(request, route.name, rest, placement)
        if decision.remember:
            self._remember(response, name, placement.environment)
        return response

    @staticmethod
    def _remember(response: HttpResponse, name: str, environment: str) -> None:
        response.set_cookie(
            ENV_COOKIE,
            environment,
            max_age=30 * 86400,
            path=f"/apps/{name}/",
            httponly=True,
            samesite="Lax",
            secure=settings.SESSION_COOKIE_SECURE,
        )

    # --- the upstream request ------------------------------------------------------------

    def _upstream_headers(self, request: HttpRequest, name: str, placement: Placement) -> dict[str, str]:
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
        headers["X-Forwarded-Host"] = request.get_host()
        headers["X-Forwarded-Proto"] = request.scheme or "http"
        return headers

    def _forward(self, request: HttpRequest, name: str, rest: str, placement: Placement) -> HttpResponse:
        started = time.monotonic()
        config = settings.APP_CONFIG
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return pages.simple(request, 400, "Bad request", "The Content-Length header is not a number.")
        if length > config.proxy_max_upload_bytes:
            return pages.too_large(request, config.proxy_max_upload_bytes)
        if length < 0:
            return pages.simple(request, 400, "Bad request", "The Content-Length header is negative.")

        path = quote(f"/apps/{name}/{rest}".encode(), QUOTE_SAFE)
        query = routing.safe_query(routing.query_without_env(request.META.get("QUERY_STRING", "")))
        url = placement.target_url + path + (f"?{query}" if query else "")
        headers = self._upstream_headers(request, name, placement)
        body: HttpRequest | bytes | None = request if length else None
        if not length and "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
            # Django reads no body without Content-Length; the server has de-chunked it, so
            # read it here (bounded) and send it with a length.
            data = request.META["wsgi.input"].read(config.proxy_max_upload_bytes + 1)
            if len(data) > config.proxy_max_upload_bytes:
                return pages.too_large(request, config.proxy_max_upload_bytes)
            headers["Content-Length"] = str(len(data))
            body = data or None
        method = request.method or "GET"
        try:
            upstream = POOLS.get(placement).urlopen(
                method,
                url,
                body=body,
                headers=headers,
                redirect=False,
                retries=_retries(method, body is not None),
                decode_content=False,
                preload_content=False,
            )
        except HTTPError as error:
            response = self._upstream_failed(request, name, placement, error)
            _observe(name, placement, response.status_code, started)
            return response
        response = self._response(request, name, placement, upstream)
        _observe(name, placement, response.status_code, started)
        return response

    def _upstream_failed(self, request: HttpRequest, name: str, placement: Placement, error: Exception) -> HttpResponse:
        reason = error.reason if isinstance(error, MaxRetryError) and error.reason is not None else error
        log.warning("proxy %s → %s failed: %s", name, placement.environment, reason)
        route = routing.AppRoute(pk=0, name=name, display_name=name, options={})
        # NewConnectionError subclasses ConnectTimeoutError in urllib3 2: test it first.
        if isinstance(reason, NewConnectionError):
            return pages.bad_gateway(request, route, (placement.environment,), "refuses connections")
        if isinstance(reason, ConnectTimeoutError | ReadTimeoutError):
            return pages.gateway_timeout(request, route, placement.environment)
        return pages.bad_gateway(request, route, (placement.environment,), "did not answer properly")

    # --- the response -----------------------------------------------------------------------

    def _response(
        self, request: HttpRequest, name: str, placement: Placement, upstream: urllib3.BaseHTTPResponse
    ) -> HttpResponse:
        upstream_headers = upstream.headers
        set_cookies = upstream_headers.getlist("set-cookie")
        upstream_headers.discard("set-cookie")
        listed = {t.strip().lower() for t in upstream_headers.get("Connection", "").split(",") if t.strip()}
        self._set_content_type(request, upstream)
        content_type = upstream_headers.get("Content-Type")
        if should_stream(upstream):
            response: HttpResponse | StreamingHttpResponse = StreamingHttpResponse(
                _stream(upstream, get_streaming_amt(upstream) if content_type else _STREAM_CHUNK, name),
                status=upstream.status,
                content_type=content_type,
            )
        else:
            try:
                content = upstream.data or b""
            except HTTPError as error:
                upstream.close()
                upstream.release_conn()
                return self._upstream_failed(request, name, placement, error)
            finally:
                upstream.release_conn()
            response = HttpResponse(content, status=upstream.status, content_type=content_type)
        # Like revproxy's set_response_headers, but repeated headers (Vary, Link…) are joined
        # instead of the last one winning, and Connection-listed headers are dropped too.
        for header in {key.lower(): key for key in upstream_headers}.values():
            if not rules.passes(header.lower(), listed):
                continue
            response[header] = ", ".join(upstream_headers.getlist(header))
        refresh = upstream_headers.get("Refresh")
        if refresh and rules.foreign(request, rules.refresh_target(refresh), placement):
            del response["Refresh"]
        location = upstream_headers.get("Location")
        if location:
            if rules.foreign(request, location, placement):
                log.info("proxy %s: redirect to %s refused (another site)", name, urlsplit(location).netloc)
                return pages.simple(
                    request,
                    502,
                    "Redirect refused",
                    "The application tried to send you to another site; the supervisor does not relay that.",
                )
            response["Location"] = rules.public_location(request, location, placement)
        for raw in set_cookies:
            rules.pass_cookie(response, raw, name)
        return response


def _stream(upstream: urllib3.BaseHTTPResponse, amount: int, name: str) -> Iterator[bytes]:
    """The worker's body, chunk by chunk; a stalled or broken worker ends the response early
    (the client sees it cut short against Content-Length) instead of raising a traceback."""
    finished = False
    try:
        yield from upstream.stream(amount, decode_content=False)
        finished = True
    except HTTPError as error:
        log.warning("proxy %s: response body cut short: %s", name, error)
    finally:
        if not finished:
            upstream.close()
        upstream.release_conn()


def _observe(name: str, placement: Placement, status: int, started: float) -> None:
    metrics.observe_proxy_request(name, placement.environment, status, time.monotonic() - started)
