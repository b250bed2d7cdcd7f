"""Which operations an app's state offers, per environment and for all of them.

The buttons are drawn from here and ``operation_view`` checks the same rule when the form comes
back, so a "start" on a running placement is neither offered nor done (it used to queue a start,
audited ok). The rule reads the *shown* status (``control.shown_status``): what the operator
sees is what decides. Bulk actions on the list stay as they were: a selection is an explicit
request, and each action function ignores what does not apply.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from apps_registry.control import liveness
from apps_registry.control.shown_status import UNKNOWN, explain, shown_status
from apps_registry.models import Application, AppStatus, EnvironmentStatus

# Shown status → the per-environment operations it offers.
_OFFERED_FROM: dict[str, frozenset[str]] = {
    "start": frozenset({AppStatus.STOPPED, AppStatus.ERROR}),
    # A queued start is withdrawn, a starting or running app stopped; an unreachable
    # environment's app may still run (the stop waits in its command stream).
    "stop": frozenset({AppStatus.QUEUED, AppStatus.STARTING, AppStatus.RUNNING, UNKNOWN}),
    "restart": frozenset({AppStatus.RUNNING}),
}
PER_ENVIRONMENT = tuple(_OFFERED_FROM)


@dataclass(frozen=True)
class Placement:
    """One placement as the operator sees it: the status shown (what the rule reads), what
    the worker last reported, its last error, since when, and why it is shown unknown."""

    environment: str
    shown: str
    observed: str = ""
    error: str = ""
    since: dt.datetime | None = None
    detail: str = ""
    environment_status: str = ""


def placements_of(app: Application) -> list[Placement]:
    """The app's placements by environment name, with their true shown status (one Redis
    round trip for the environments' liveness)."""
    rows = sorted(app.placements.select_related("environment"), key=lambda p: p.environment.name)
    statuses = liveness.environment_statuses([p.environment for p in rows])
    found = []
    for p in rows:
        env_status, seen = statuses.get(p.environment.name, (EnvironmentStatus.UNKNOWN, None))
        found.append(
            Placement(
                environment=p.environment.name,
                shown=shown_status(p.status, env_status),
                observed=p.status,
                error=p.error,
                since=p.status_changed_at,
                detail=explain(p.status, env_status, seen),
                environment_status=str(env_status),
            )
        )
    return found


def offered_on(operation: str, shown: str) -> bool:
    """Whether ``operation`` is offered on one environment whose app is shown ``shown``."""
    return shown in _OFFERED_FROM.get(operation, frozenset())


def targets(operation: str, placements: Iterable[Placement]) -> list[str]:
    """The environments an operation "for all" acts on: those whose state offers it; every
    placement for ``remove`` (unloading applies whatever the state)."""
    placements = list(placements)
    if operation == "remove":
        return [p.environment for p in placements]
    return [p.environment for p in placements if offered_on(operation, p.shown)]


def offered_from(operation: str) -> str:
    """The shown statuses that offer ``operation``, space-separated: the ``data-from`` of its
    button, which status.js shows or hides as the statuses change (empty: always offered)."""
    return " ".join(sorted(_OFFERED_FROM.get(operation, ())))
