"""The Environments list's live figures, for its columns and the status endpoint alike: the
apps running there from the workers' current reports (the placements' observed statuses, kept
up to date by ingest), not the two-minute heartbeat's list; and the age of the last sign of
life (lease or heartbeat), which moves on every refresh."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from django.db.models import Count, F, Window
from django.db.models.functions import RowNumber

from apps_registry.control import liveness
from apps_registry.models import AppEnvironment, AppStatus, Environment, EnvironmentStatus

SHOWN_NAMES = 8


def running_apps(envs: Sequence[Environment]) -> dict[str, tuple[list[str], int]]:
    """Environment name → (the first names of the apps reported running there, how many in
    all), in two queries whatever the number of apps: the counts, and the first
    ``SHOWN_NAMES`` names of each environment (a window over the running placements)."""
    found: dict[str, tuple[list[str], int]] = {env.name: ([], 0) for env in envs}
    running = AppEnvironment.objects.filter(environment__in=list(envs), status=AppStatus.RUNNING)
    counts = dict(running.values("environment__name").annotate(n=Count("pk")).values_list("environment__name", "n"))
    first = (
        running.annotate(
            rank=Window(RowNumber(), partition_by=F("environment_id"), order_by=F("application__name").asc())
        )
        .filter(rank__lte=SHOWN_NAMES)
        .order_by("environment__name", "application__name")
        .values_list("environment__name", "application__name")
    )
    for env, app in first:
        found[env][0].append(app)
    return {name: (names, counts.get(name, 0)) for name, (names, _) in found.items()}


def running_text(running: tuple[list[str], int], status: str) -> str:
    """``a, b, c … (+3)``; on an environment that is not online what it ran is not known now."""
    names, count = running
    if status != EnvironmentStatus.ONLINE:
        return f"— (environment {status})" if count else "—"
    if count > len(names):
        return f"{', '.join(names)} … (+{count - len(names)})"
    return ", ".join(names) or "—"


def heartbeat_text(last_seen: dt.datetime | None) -> str:
    return liveness.describe_age(last_seen)
