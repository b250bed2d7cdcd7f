"""Requests whose environment is not there to answer: each such environment's outcome becomes
``not delivered`` (with the reason) instead of leaving the request pending for ever.

The command itself stays on the environment's stream until its TTL, and the registry keeps its
desired state: when the environment comes back it runs the command or reconciles to that state,
and the request's entry then says ``converged later`` (requests.note_converged/record_outcome).
Run periodically by the start queue worker (``recover_throttled``).
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.utils import timezone

from apps_registry.control import liveness
from apps_registry.models import AuditEntry, Environment, EnvironmentStatus
from apps_registry.registry import actions

log = logging.getLogger(__name__)
GONE = (EnvironmentStatus.OFFLINE, EnvironmentStatus.STOPPED)


def close_undeliverable(now: dt.datetime | None = None) -> int:
    """Mark ``not delivered`` the environments of pending requests that are offline or stopped
    (after at least the offline delay since the request), forgotten, or silent for longer than
    the command TTL. Returns how many environment outcomes were recorded."""
    config = settings.APP_CONFIG
    now = now or timezone.now()
    grace = dt.timedelta(seconds=config.offline_after)
    rows = list(
        AuditEntry.objects.filter(result=AuditEntry.Result.PENDING, at__lt=now - grace)
        .exclude(request_id="")
        .values_list("request_id", "environments", "outcomes", "at")
    )
    waiting = {env for _rid, envs, outcomes, _at in rows for env in envs if env not in outcomes}
    if not waiting:
        return 0
    statuses = liveness.environment_statuses(list(Environment.objects.filter(name__in=waiting)), now)
    silent_after = dt.timedelta(seconds=config.command_ttl) + grace
    recorded = 0
    for request_id, envs, outcomes, at in rows:
        for env in envs:
            if env in outcomes:
                continue
            later = "; it converges to the requested state when it is back"
            if env not in statuses:
                reason, later = "the environment was forgotten", ""
            elif statuses[env][0] in GONE:
                status, last_seen = statuses[env]
                reason = f"the environment is {status} (last seen {liveness.describe_age(last_seen, now)})"
            elif now - at > silent_after:
                reason = "no acknowledgement within the command TTL"
            else:
                continue
            log.info("request %s: %s not delivered (%s)", request_id, env, reason)
            actions.record_outcome(
                request_id,
                env,
                AuditEntry.Outcome.NOT_DELIVERED,
                error=f"{env}: not delivered, {reason}{later}",
            )
            recorded += 1
    return recorded
