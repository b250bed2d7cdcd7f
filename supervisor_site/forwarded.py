"""Trust ``X-Forwarded-*`` headers only from the proxies listed in ``TRUSTED_PROXY_IPS``.

Behind the supervisor's proxy (or nginx), a worker must build absolute URLs, redirects and
CSRF origin checks with the host and scheme the browser used, not its own loopback address.
Django's ``USE_X_FORWARDED_HOST`` would believe any client; this middleware believes the
headers only when the connection itself comes from a trusted proxy, and then:

- ``Host`` becomes the first ``X-Forwarded-Host`` value;
- the request scheme becomes ``X-Forwarded-Proto`` (http or https only);
- ``REMOTE_ADDR`` becomes the nearest address in ``X-Forwarded-For`` that is not itself a
  trusted proxy (reading from the right), so a client-supplied prefix is never believed. The
  connection's own address stays in ``META[PEER_ADDR]`` (a proxy appends that one).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PEER_ADDR = "appsup.peer_addr"
# Set (True) when the connection came from a trusted proxy: what else such a proxy may say
# (the app-root header, worker_agent/web/middleware.py) is believed only then.
FROM_TRUSTED_PROXY = "appsup.from_trusted_proxy"


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """``["127.0.0.1", "10.0.0.0/8"]`` → networks; a bad entry raises ValueError naming it."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"TRUSTED_PROXY_IPS: {entry!r} is not an IP address or network") from None
    return tuple(networks)


def _is_trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in network for network in networks)


class ForwardedHeadersMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response
        try:
            self.networks = parse_networks(settings.APP_CONFIG.trusted_proxies)
        except ValueError as error:
            raise ImproperlyConfigured(str(error)) from None

    def __call__(self, request: HttpRequest) -> HttpResponse:
        meta = request.META
        meta[PEER_ADDR] = meta.get("REMOTE_ADDR", "")
        if self.networks and _is_trusted(meta.get("REMOTE_ADDR", ""), self.networks):
            meta[FROM_TRUSTED_PROXY] = True
            self._apply(meta)
        return self.get_response(request)

    def _apply(self, meta: dict) -> None:
        host = meta.get("HTTP_X_FORWARDED_HOST", "").split(",")[0].strip()
        if host:
            meta["HTTP_HOST"] = host
        proto = meta.get("HTTP_X_FORWARDED_PROTO", "").split(",")[0].strip().lower()
        if proto in ("http", "https"):
            meta["wsgi.url_scheme"] = proto
        hops = [hop.strip() for hop in meta.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                break  # garbage in the chain: believe nothing beyond it
            if not _is_trusted(hop, self.networks):
                meta["REMOTE_ADDR"] = hop
                break
