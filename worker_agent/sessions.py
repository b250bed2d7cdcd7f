"""Session cookies: one per hosted app (placeholder: the supervisor's defaults)."""

from django.contrib.sessions.middleware import SessionMiddleware


class PerAppSessionMiddleware(SessionMiddleware):
    pass
