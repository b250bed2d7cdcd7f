"""Liveness and readiness probes."""

from django.db import connection
from django.http import HttpRequest, JsonResponse

from apps_registry import redis_client


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
