"""The Environments list's live figures, for its columns and the status endpoint alike: the
apps running there from the workers' current reports (the placements' observed statuses, kept
up to date by ingest), not the two-minute heartbeat's list; and the age of the last sign of
life (lease or heartbeat), which moves on every refresh."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from apps_registry.control import liveness
from apps_registry.models import AppEnvironment, AppStatus, Environment, EnvironmentStatus

SHOWN_NAMES = 8


def running_apps(envs: Sequence[Environment]) -> dict[str, list[str]]:
    """Environment name → the names of the apps reported running there (one query)."""
    found: dict[str, list[str]] = {env.name: [] for env in envs}
    rows = (
        AppEnvironment.objects.filter(environment__in=list(envs), status=AppStatus.RUNNING)
        .order_by("application__name")
        .values_list("environment__name", "application__name")
    )
    for env, app in rows:
        found[env].append(app)
    return found


def running_text(names: list[str], status: str) -> str:
    """``a, b, c … (+3)``; on an environment that is not online what it ran is not known now."""
    if status != EnvironmentStatus.ONLINE:
        return f"— (environment {status})" if names else "—"
    if len(names) > SHOWN_NAMES:
        return f"{', '.join(names[:SHOWN_NAMES])} … (+{len(names) - SHOWN_NAMES})"
    return ", ".join(names) or "—"


def heartbeat_text(last_seen: dt.datetime | None) -> str:
    return liveness.describe_age(last_seen)
