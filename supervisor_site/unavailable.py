"""How an app that cannot serve now is explained to whoever asked: the one wording and
``Retry-After`` table for the supervisor's proxy and the worker's own error pages, and whether
the client wants JSON."""

from __future__ import annotations

from django.http import HttpRequest

# Transitions take seconds; an app stopped by an operator or failed waits for a person.
# "busy" is not an app status: the proxy's answer when the app already has as many requests
# in flight as it may (PROXY_APP_CONCURRENCY); one of them ends within a second or two.
RETRY_AFTER = {"queued": 5, "starting": 5, "stopping": 5, "stopped": 30, "error": 30, "busy": 2}
DEFAULT_RETRY_AFTER = 10

# Completes "<the app> …", by the app's status.
STATUS_TEXT = {
    "stopped": "is stopped",
    "queued": "is queued to start",
    "starting": "is starting",
    "stopping": "is stopping",
    "error": "failed to start; an operator can see why in the supervisor's admin",
    "busy": "is answering as many requests as it may at once",
}


# What the visitor can do, completing the sentence above: a transition ends by itself (and the
# page reloads itself after Retry-After); a stopped or failed app waits for a person, so "try
# again in a moment" would send them reloading for nothing.
ADVICE = {
    "stopped": "It was stopped by an operator and does not start by itself; an operator can start it "
    "from the supervisor's admin.",
    "error": "It will not start by itself.",
}
DEFAULT_ADVICE = "Try again in a moment: this page reloads itself."
# Statuses that end without anyone acting: their pages refresh themselves as Retry-After says.
SELF_ENDING = frozenset({"queued", "starting", "stopping", "busy"})


def advice(status: str) -> str:
    return ADVICE.get(status, DEFAULT_ADVICE)


def refresh_after(status: str) -> int | None:
    """Seconds after which a browser should reload the page (a meta refresh), or None."""
    return retry_after(status) if status in SELF_ENDING else None


def retry_after(status: str) -> int:
    """Seconds for the ``Retry-After`` header of a 503 for an app in ``status``."""
    return RETRY_AFTER.get(status, DEFAULT_RETRY_AFTER)


def status_text(status: str) -> str:
    return STATUS_TEXT.get(status, "is not available right now")


def wants_json(request: HttpRequest) -> bool:
    """An API client (JSON asked for, HTML not) rather than a browser."""
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept
