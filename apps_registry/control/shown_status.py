"""The status shown for an app on an environment — in the admin, the API, the status endpoint
and the proxy's chooser — derived from what the worker last reported (the observed status,
``AppEnvironment.status``) and the environment's liveness.

A report is evidence from the past: it stays true only while its environment is online. On an
environment that is not online (unknown, offline, stopped) an app that was running, starting or
stopping is shown ``unknown``, with what is known ("environment offline since 08:31 UTC, last
seen running"). ``stopped``, ``error`` and ``queued`` stay as they are: the first two mean nothing
runs there for the app, the last is the registry's own state (the start waits for the queue).
"""

from __future__ import annotations

import datetime as dt

from apps_registry.models import AppStatus, EnvironmentStatus

UNKNOWN = "unknown"
# Observed statuses that an unreachable environment cannot make untrue.
_STILL_TRUE = frozenset({AppStatus.STOPPED, AppStatus.ERROR, AppStatus.QUEUED})


def shown_status(observed: str, environment_status: str) -> str:
    if environment_status == EnvironmentStatus.ONLINE or observed in _STILL_TRUE:
        return observed
    return UNKNOWN


def explain(observed: str, environment_status: str, last_seen: dt.datetime | None) -> str:
    """Why a status is shown ``unknown`` (empty when it is the observed one)."""
    if shown_status(observed, environment_status) != UNKNOWN:
        return ""
    since = f" since {last_seen:%Y-%m-%d %H:%M:%S} UTC" if last_seen else ""
    return f"environment {environment_status}{since}; last seen {observed}"
