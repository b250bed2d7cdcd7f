"""What of a worker's answer may reach the browser: which headers pass, where a redirect may
lead, which cookies the app may set. The proxy view applies these rules to every response."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

from django.http import HttpRequest, HttpResponse
from revproxy.utils import cookie_from_string, is_hop_by_hop

from apps_registry.proxy.routing import Mount, Placement

log = logging.getLogger("apps_registry.proxy.view")  # the proxy's one logger

# Response headers the supervisor's own server sets, or that describe the worker's hop.
DROPPED_RESPONSE_HEADERS = frozenset({"server", "date", "keep-alive", "trailer", "te", "upgrade"})
# Headers that act on the supervisor's whole origin, beyond the app's path: a service worker
# scope wider than the app, wiping the operator's site data, pinning HTTPS for every host name,
# framing rules that would replace the supervisor's own. An app never gets to set them.
ORIGIN_WIDE_RESPONSE_HEADERS = frozenset(
    {"service-worker-allowed", "clear-site-data", "strict-transport-security", "x-frame-options"}
)


def passes(header: str, connection_listed: set[str]) -> bool:
    """Whether a response header (lower-cased) of the worker reaches the browser."""
    return not (
        is_hop_by_hop(header)
        or header in connection_listed
        or header in DROPPED_RESPONSE_HEADERS
        or header in ORIGIN_WIDE_RESPONSE_HEADERS
        or header.startswith("proxy-")
    )


def app_cookie_prefix(name: str) -> str:
    return f"app_{name}_"


def refresh_target(value: str) -> str:
    """The URL of a ``Refresh: 5; url=…`` header ('' when it only reloads)."""
    _delay, _sep, rest = value.partition(";")
    rest = rest.strip()
    if rest[:4].lower() == "url=":
        rest = rest[4:]
    return rest.strip().strip("'\"")


def foreign(mount: Mount, url: str, placement: Placement) -> bool:
    """Whether ``url`` leads off the app: to a host that is neither its worker nor the host the
    browser sees it on (or a scheme-relative ``//host`` one)."""
    parts = urlsplit(url)
    if not parts.netloc:
        return False
    worker_hosts = {urlsplit(placement.target_url).netloc.lower(), urlsplit(placement.url).netloc.lower()}
    return parts.netloc.lower() not in worker_hosts | {mount.host.lower()}


def public_location(request: HttpRequest, mount: Mount, location: str, placement: Placement) -> str:
    """A redirect as the browser must follow it: an absolute one to the worker points at the
    host the browser used instead, and on an app's own host a path under the worker's
    ``/apps/<name>/`` loses that prefix (the worker roots its URLs at "/" there already; this
    covers one that does not). Others pass unchanged."""
    parts = urlsplit(location)
    if not parts.netloc:
        if parts.scheme or not parts.path.startswith("/"):
            return location  # relative to the current page: the same on either host
        return urlunsplit(("", "", mount.public_path(parts.path), parts.query, parts.fragment))
    worker_hosts = {urlsplit(placement.target_url).netloc.lower(), urlsplit(placement.url).netloc.lower()}
    if parts.netloc.lower() not in worker_hosts | {mount.host.lower()}:
        return location
    path = mount.public_path(parts.path)
    return urlunsplit((request.scheme or "http", mount.host, path, parts.query, parts.fragment))


def pass_cookie(response: HttpResponse, raw: str, mount: Mount) -> None:
    """Let through only the app's own cookies, only for the app's own path (on its own host:
    any path, those under ``/apps/<name>/`` moved to "/"), never with a Domain: a cookie is
    the host's alone, so an app host's cookie never reaches the supervisor or another app."""
    name = mount.name
    cookie = cookie_from_string(raw)
    if not cookie or not cookie["key"].startswith(app_cookie_prefix(name)):
        if cookie:
            log.info("proxy %s: dropped Set-Cookie for %r (not the app's own)", name, cookie["key"])
        return
    scope = mount.prefix
    path = mount.public_path(cookie.get("path") or scope)
    if not (path == scope.rstrip("/") or path.startswith(scope)):
        path = scope
    cookie["path"] = path
    cookie.pop("domain", None)
    try:
        response.set_cookie(**cookie)
    except (TypeError, ValueError) as error:
        log.info("proxy %s: dropped malformed Set-Cookie %r: %s", name, cookie["key"], error)
