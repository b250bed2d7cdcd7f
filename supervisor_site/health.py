"""Liveness and readiness probes, and the Prometheus metrics endpoint (every role)."""

import hmac
import ipaddress

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from apps_registry.control import redis_client


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as error:  # any failure means not ready; say which
        checks["database"] = f"error: {error.__class__.__name__}"
    if redis_client.configured():
        try:
            redis_client.get().ping()
            checks["redis"] = "ok"
        except Exception as error:
            checks["redis"] = f"error: {error.__class__.__name__}"
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)


def _metrics_allowed(request: HttpRequest) -> bool:
    """A bearer token equal to METRICS_TOKEN, or a client address in METRICS_ALLOWED_IPS.
    The address is REMOTE_ADDR, which X-Forwarded-For replaces only when the TCP peer is in
    TRUSTED_PROXY_IPS (supervisor_site.forwarded), so a client cannot write its way in."""
    config = settings.APP_CONFIG
    header = request.headers.get("Authorization", "")
    offered = header[7:].strip() if header.startswith("Bearer ") else ""
    if config.metrics_token and offered and hmac.compare_digest(offered.encode(), config.metrics_token.encode()):
        return True
    try:
        peer = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(peer in network for network in config.metrics_allowed_networks)


def metrics(request: HttpRequest) -> HttpResponse:
    from apps_registry.observability.exposition import render

    if not _metrics_allowed(request):
        config = settings.APP_CONFIG
        if not config.metrics_token and not config.metrics_allowed_networks:
            reason = "metrics are off: set METRICS_TOKEN or METRICS_ALLOWED_IPS"
        else:
            reason = "metrics need a bearer token (METRICS_TOKEN) or an allowed address (METRICS_ALLOWED_IPS)"
        return HttpResponse(reason + "\n", status=403, content_type="text/plain")
    if settings.APP_MODE == "worker":
        from worker_agent.hosting.metrics import HOSTED_APPS

        body, content_type = render(HOSTED_APPS)
    else:
        body, content_type = render()
    return HttpResponse(body, content_type=content_type)
