"""Failing an app over: its placement moves off environments that have been offline too long
onto one that is online, through the same placement change and start queue as an operator's
edit, audited as a failover (``via="failover"``). Decided by ``apps_registry.control.failover``."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import transaction

from apps_registry.models import Application, Environment
from apps_registry.registry.applications import (
    _lock,
    _placements,
    _runs,
    request_start,
    set_application_environments,
)
from apps_registry.registry.requests import audit

VIA = "failover"


@transaction.atomic
def fail_over_application(app: Application, *, away_from: Sequence[str], to: Environment) -> str:
    """Place the app on ``to`` instead of ``away_from`` and queue its start there; returns the
    start's request id, or "" when nothing was done because, on the fresh rows under the app's
    lock, the app no longer qualifies: failover off, or it runs (or is meant to) on an
    environment outside ``away_from``, or nowhere. Two sweeps racing therefore move it once.

    The environments left no longer carry the app in the desired state: a remove command goes
    to them (it waits on their stream), and an environment that comes back unloads the app
    whether it reads that command or only reconciles, so the app runs in one place."""
    _lock(app)
    if not Application.objects.filter(pk=app.pk, failover=True).exists():
        return ""
    placements = _placements(app, None)
    running_on = {p.environment.name for p in placements if _runs(p)}
    away = set(away_from)
    if not running_on or not running_on <= away or to.name in away:
        return ""
    keep = [p.environment for p in placements if p.environment.name not in away]
    already_placed = any(env.pk == to.pk for env in keep)
    if not already_placed:
        keep.append(to)
    change = set_application_environments(app, keep, via=VIA, force=True)
    request_id = change.start_request or request_start(app, environments=[to.name], via=VIA)
    # The move itself, beside the remove and start entries it made (via "failover" too). No
    # request id: those entries follow the commands' outcomes, this one records the decision.
    audit("failover", app_name=app.name, environments=sorted({*running_on, to.name}), via=VIA)
    return request_id
