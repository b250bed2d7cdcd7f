"""Short answers for apps that cannot serve: 404 for unknown ones, 503 for the rest.

HTML for people, JSON for clients that ask for it; never a traceback.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string

from supervisor_site.unavailable import retry_after as retry_after_for
from supervisor_site.unavailable import status_text, wants_json


def _answer(request: HttpRequest, status_code: int, body: dict, title: str, message: str) -> HttpResponse:
    if wants_json(request):
        response: HttpResponse = JsonResponse(body, status=status_code)
    else:
        html = render_to_string(
            "worker_agent/app_page.html",
            {"title": title, "message": message, "status": body.get("status"), "retry_after": body.get("retry_after")},
        )
        response = HttpResponse(html, status=status_code, content_type="text/html; charset=utf-8")
    response["Cache-Control"] = "no-store"
    # An expected answer, not a server fault: keep django.request from logging it as an error.
    response._has_been_logged = True
    return response


def not_found(request: HttpRequest, name: str | None) -> HttpResponse:
    body = {"app": name, "status": "unknown", "error": "no such application here"}
    return _answer(request, 404, body, "Application not found", "There is no application at this address.")


def unavailable(request: HttpRequest, name: str, status: str) -> HttpResponse:
    retry_after = retry_after_for(status)
    body = {"app": name, "status": status, "retry_after": retry_after}
    message = f"This application {status_text(status)}."
    response = _answer(request, 503, body, f"{name} is not available", message)
    response["Retry-After"] = str(retry_after)
    return response
