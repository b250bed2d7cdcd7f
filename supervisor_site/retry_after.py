"""How long a client should wait before asking again for an app that cannot serve now, by the
app's status: one table for the supervisor's proxy and the worker's own error pages."""

from __future__ import annotations

# Transitions take seconds; an app stopped by an operator or failed waits for a person.
RETRY_AFTER = {"queued": 5, "starting": 5, "stopping": 5, "stopped": 30, "error": 30}
DEFAULT_RETRY_AFTER = 10


def retry_after(status: str) -> int:
    """Seconds for the ``Retry-After`` header of a 503 for an app in ``status``."""
    return RETRY_AFTER.get(status, DEFAULT_RETRY_AFTER)
