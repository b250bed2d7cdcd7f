"""Session cookies: one per hosted app, the supervisor's defaults everywhere else.

Under ``/apps/<name>/`` the session lives in that app's database and its cookie is named
``app_<name>_sessionid`` with path ``/apps/<name>/`` (``/`` when the app is served on its own
host, where the cookie has no Domain and so stays on that host): a browser never sends it to
another app or to the supervisor, and a key copied to another app finds no session there.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.contrib.sessions.backends.base import UpdateError
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.contrib.sessions.exceptions import SessionInterrupted
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpRequest
from django.utils.cache import patch_vary_headers
from django.utils.http import http_date


def cookie_name(app_name: str) -> str:
    return f"app_{app_name}_sessionid"


def cookie_path(request: HttpRequest, app_name: str) -> str:
    """The app's root as the browser sees it (``middleware.py`` sets ``hosted_app_root``)."""
    return getattr(request, "hosted_app_root", None) or f"/apps/{app_name}/"


class PerAppSessionMiddleware(SessionMiddleware):
    def process_request(self, request):
        app_name = getattr(request, "hosted_app", None)
        if app_name is None:
            return super().process_request(request)
        # Always the database store: it follows the app's alias, so sessions stay per app.
        request.session = DatabaseSessionStore(request.COOKIES.get(cookie_name(app_name)))

    def process_response(self, request, response):
        app_name = getattr(request, "hosted_app", None)
        if app_name is None:
            return super().process_response(request, response)
        try:
            session = request.session
            accessed, modified, empty = session.accessed, session.modified, session.is_empty()
        except AttributeError:
            return response
        name, path = cookie_name(app_name), cookie_path(request, app_name)
        if name in request.COOKIES and empty:
            response.delete_cookie(
                name, path=path, domain=settings.SESSION_COOKIE_DOMAIN, samesite=settings.SESSION_COOKIE_SAMESITE
            )
            patch_vary_headers(response, ("Cookie",))
            return response
        if accessed:
            patch_vary_headers(response, ("Cookie",))
        if (modified or settings.SESSION_SAVE_EVERY_REQUEST) and not empty and response.status_code < 500:
            if session.get_expire_at_browser_close():
                max_age, expires = None, None
            else:
                max_age = session.get_expiry_age()
                expires = http_date(time.time() + max_age)
            try:
                session.save()
            except UpdateError:
                raise SessionInterrupted(
                    "The session was deleted before the request completed; the user may have logged out meanwhile."
                ) from None
            response.set_cookie(
                name,
                session.session_key,
                max_age=max_age,
                expires=expires,
                domain=settings.SESSION_COOKIE_DOMAIN,
                path=path,
                secure=settings.SESSION_COOKIE_SECURE or None,
                httponly=settings.SESSION_COOKIE_HTTPONLY or None,
                samesite=settings.SESSION_COOKIE_SAMESITE,
            )
        return response
