"""Login throttling with django-axes, for the supervisor's admin and every hosted app's admin.

Failures are counted per username *and* client address; once ``LOGIN_FAILURE_LIMIT`` wrong
passwords were given within ``LOGIN_LOCKOUT_SECONDS`` (each failure restarts that window), the
next attempt, right or wrong, is answered 429 with ``Retry-After`` until the window has passed
without one. A successful login clears the count.

Where the counts live (settings.py chooses, docs/security.md says why):

- supervisor and standalone: axes's database handler, in the instance's own database (the
  supervisor's admin lists the attempts under *Axes*; deleting one unlocks). A hosted app's
  attempts in standalone go there too: the router keeps axes's tables in ``default``.
- worker: axes's cache handler on the command Redis (``<prefix>:login:*``), because a worker's
  own database is not shared with the other environments serving the same app, and an app's
  database holds only the app's tables.

A hosted app's counts are its own: the username axes sees is ``<app>/<username>``, so ``admin``
locked out of one app (or of the supervisor) is not locked out of another.
"""

from __future__ import annotations

import math

from axes.backends import AxesStandaloneBackend
from axes.helpers import get_cool_off
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html


class ThrottleBackend(AxesStandaloneBackend):
    """axes's check, first in ``AUTHENTICATION_BACKENDS``; ModelBackend authenticates after it.

    Without a request there is nothing to throttle: only code calls ``authenticate()`` that way
    (``Client.login`` in tests, management commands); every login form passes its request.
    axes's own backend raises instead, which would make such callers fail outright."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs
    ):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)


def client_address(request: HttpRequest) -> str:
    """The client's address: ``REMOTE_ADDR``, which ``supervisor_site.forwarded`` has already
    replaced by the ``X-Forwarded-For`` hop when, and only when, a trusted proxy sent it (a
    worker behind the supervisor's proxy sees the browser's address, not the supervisor's)."""
    return request.META.get("REMOTE_ADDR", "")


def client_username(request: HttpRequest, credentials: dict | None = None) -> str | None:
    """The username the attempt is counted under: the one typed, prefixed with the hosted
    app's name on ``/apps/<name>/`` (``worker_agent.web.middleware`` sets ``hosted_app``)."""
    field = settings.AXES_USERNAME_FORM_FIELD
    source = credentials or (request.POST if request is not None else {})
    username = source.get(field)
    app = getattr(request, "hosted_app", None)
    if app and username is not None:
        return f"{app}/{username}"
    return username


def retry_after_seconds(request: HttpRequest) -> int:
    cool_off = get_cool_off(request)
    return max(1, math.ceil(cool_off.total_seconds())) if cool_off else 60


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict | None = None
) -> HttpResponse:
    """A plain page, 429 with ``Retry-After``: the same for a right and a wrong password, so
    the answer tells an attacker nothing about the password tried."""
    seconds = retry_after_seconds(request)
    minutes = math.ceil(seconds / 60)
    wait = f"{seconds} seconds" if seconds < 120 else f"{minutes} minutes"
    body = format_html(
        "<!DOCTYPE html><html><head><title>Too many failed logins</title></head><body>"
        "<h1>Too many failed logins</h1>"
        "<p>Logging in with this username from your address is paused after {} wrong passwords. "
        "Try again in {}; the pause starts over with every attempt made meanwhile.</p>"
        "</body></html>",
        settings.APP_CONFIG.login_failure_limit,
        wait,
    )
    response = HttpResponse(body, status=429, content_type="text/html; charset=utf-8")
    response["Retry-After"] = str(seconds)
    response["Cache-Control"] = "no-store"
    return response
