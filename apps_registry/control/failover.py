"""Failover: apps that opted in (``Application.failover``) and run only on environments that
have been offline for longer than ``APP_FAILOVER_GRACE`` are started on another environment
(``actions.fail_over_application``: the placement moves, through the start queue).

Run by the start queue worker with the other periodic checks (``recovery.recover_throttled``,
at most once per start-lock TTL across all queue workers); the action re-checks each app under
its row lock, so two sweeps that overlap still move an app once.

- *Offline*, not *stopped*: an environment whose agent deregistered (SIGTERM) was stopped on
  purpose; its apps wait for it (or for an operator's move). Redis unreachable makes every
  environment ``unknown``, never offline (control.liveness): no failover on a blind guess.
- The grace counts from the environment's last sighting, and is at least twice the offline
  threshold (config), so one missed beat or a short pause moves nothing.
- A target is online, enabled, approved and runs the same version as the environment the app
  ran on (the module catalogue is part of the code: same version, same modules). Among those,
  one the app is already placed on first, then the one with the fewest apps, then by name.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from apps_registry.control import liveness
from apps_registry.models import AppEnvironment, Application, Environment, EnvironmentStatus
from apps_registry.registry import actions

log = logging.getLogger(__name__)


def _runs(placement: AppEnvironment) -> bool:
    return placement.desired_running or placement.status in actions.ACTIVE


def dead_environments(envs: list[Environment], now: dt.datetime) -> dict[str, Environment]:
    """The environments offline for longer than the failover grace, by name."""
    grace = dt.timedelta(seconds=settings.APP_CONFIG.failover_grace)
    statuses = liveness.environment_statuses(envs, now)
    dead = {}
    for env in envs:
        status, seen = statuses.get(env.name, (EnvironmentStatus.UNKNOWN, None))
        if status == EnvironmentStatus.OFFLINE and now - (seen or env.first_seen) > grace:
            dead[env.name] = env
    return dead


def fail_over(now: dt.datetime | None = None) -> dict[str, str]:
    """Move the apps that qualify; returns ``{app: the environment it now starts on}``."""
    now = now or timezone.now()
    envs = list(Environment.objects.all())
    dead = dead_environments(envs, now)
    if not dead:
        return {}
    apps = list(
        Application.objects.filter(failover=True, placements__environment__name__in=list(dead))
        .distinct()
        .prefetch_related("placements__environment")
    )
    if not apps:
        return {}
    statuses = liveness.environment_statuses(envs, now)
    alive = [env for env in envs if env.enabled and env.approved and statuses[env.name][0] == EnvironmentStatus.ONLINE]
    load = Counter(
        dict(
            AppEnvironment.objects.values_list("environment__name")
            .annotate(n=Count("id"))
            .values_list("environment__name", "n")
        )
    )
    moved: dict[str, str] = {}
    for app in apps:
        placements = list(app.placements.all())
        running_on = {p.environment.name for p in placements if _runs(p)}
        if not running_on or not running_on <= set(dead):
            continue  # runs elsewhere too (nothing to do), or was not meant to run
        versions = {dead[name].version for name in running_on} - {""}
        placed = {p.environment.name for p in placements}
        targets = [env for env in alive if not versions or env.version in versions]
        if not targets:
            log.warning(
                "failover of %s: %s offline, no online enabled environment%s to start it on",
                app.name,
                ", ".join(sorted(running_on)),
                f" with version {', '.join(sorted(versions))}" if versions else "",
            )
            continue
        target = min(targets, key=lambda env: (env.name not in placed, load[env.name], env.name))
        try:
            request_id = actions.fail_over_application(app, away_from=sorted(running_on), to=target)
        except actions.ApplicationGone:
            continue
        if request_id:
            log.warning(
                "failover: %s moved from %s (offline) to %s, start request %s",
                app.name,
                ", ".join(sorted(running_on)),
                target.name,
                request_id,
            )
            moved[app.name] = target.name
            load[target.name] += 1
    return moved
