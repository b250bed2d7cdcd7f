"""Request and audit bookkeeping: every action's audit entry, and closing it with its outcome.

An operator's request (start, stop, …) gets a request id and an audit entry ``pending`` until its
outcome is known; ``close_request`` is the one way it is closed.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Q

from apps_registry.models import AuditEntry


def acting_user(user: AbstractBaseUser | None) -> AbstractBaseUser | None:
    """The user to record: anonymous users are recorded as nobody."""
    return user if user is not None and user.is_authenticated else None


def audit(
    action: str,
    *,
    user: AbstractBaseUser | None = None,
    app_name: str = "",
    environments: Iterable[str] = (),
    result: str = AuditEntry.Result.OK,
    error: str = "",
    request_id: str = "",
    via: str = "admin",
) -> AuditEntry:
    return AuditEntry.objects.create(
        user=acting_user(user),
        app_name=app_name,
        action=action,
        environments=sorted(environments),
        result=result,
        error=error,
        request_id=request_id,
        via=via,
    )


def new_request_id() -> str:
    return str(uuid.uuid4())


Outcome = AuditEntry.Outcome
# A request's audit entry follows it to these outcomes; failures of these actions can still
# turn into "converged later" (the workers converge to the registry's desired state).
CONVERGING = {"start": "running", "restart": "running", "stop": "stopped"}
_FAILED = (Outcome.ERROR, Outcome.NOT_DELIVERED)


def _summarise(entry: AuditEntry) -> None:
    """The entry's result from its environments' outcomes: pending while one is missing,
    error if one failed, superseded if one was overtaken, ok otherwise."""
    outcomes = [entry.outcomes.get(env) for env in entry.environments]
    if any(outcome is None for outcome in outcomes):
        entry.result = AuditEntry.Result.PENDING
    elif any(outcome in _FAILED for outcome in outcomes):
        entry.result = AuditEntry.Result.ERROR
    elif any(outcome == Outcome.SUPERSEDED for outcome in outcomes):
        entry.result = AuditEntry.Result.SUPERSEDED
    else:
        entry.result = AuditEntry.Result.OK
    entry.awaiting_convergence = entry.action in CONVERGING and any(outcome in _FAILED for outcome in outcomes)


def _with_error(entry: AuditEntry, error: str) -> None:
    if error and error not in entry.error:
        entry.error = f"{entry.error}; {error}" if entry.error else error


def close_request(request_id: str, *, error: str = "", override: bool = False, outcome: str = "") -> None:
    """Close a request's audit entry: every environment whose outcome is not known yet gets
    ``outcome`` (default ``ok``, or ``error`` when there is an error), and the entry its result.

    Only a ``pending`` entry is closed unless ``override``, which gives every environment this
    outcome whatever it had: a start interrupted by a dead queue worker, or a request whose
    commands could not go out (Redis unavailable after commit) even if, like a delete, it was
    recorded ``ok`` up front. One environment's own outcome is ``record_outcome``'s."""
    outcome = outcome or (Outcome.ERROR if error else Outcome.OK)
    with transaction.atomic():
        entries = AuditEntry.objects.select_for_update().filter(request_id=request_id)
        if not override:
            entries = entries.filter(result=AuditEntry.Result.PENDING)
        for entry in entries:
            if override:
                entry.error = ""
            for env in entry.environments:
                if override or env not in entry.outcomes:
                    entry.outcomes[env] = outcome
            _with_error(entry, error)
            _summarise(entry)
            if not entry.environments:  # nothing per environment: the outcome is the result
                entry.result = {Outcome.OK: AuditEntry.Result.OK, Outcome.SUPERSEDED: AuditEntry.Result.SUPERSEDED}.get(
                    outcome, AuditEntry.Result.ERROR
                )
            entry.save(update_fields=["outcomes", "result", "error", "awaiting_convergence"])


def record_outcome(request_id: str, environment: str, outcome: str, *, error: str = "") -> None:
    """One environment's outcome of a request (its acknowledgement, or that it could not be
    delivered). A later ``ok`` for an environment that failed first is "converged later"."""
    with transaction.atomic():
        for entry in AuditEntry.objects.select_for_update().filter(request_id=request_id):
            if environment not in (entry.environments or [environment]):
                continue
            before = entry.outcomes.get(environment)
            if before in (None, Outcome.OK) or (before in _FAILED and outcome == Outcome.OK):
                entry.outcomes[environment] = Outcome.CONVERGED_LATER if before in _FAILED else outcome
            else:
                continue  # a final outcome stays final (a late ack of a superseded request, say)
            _with_error(entry, error)
            _summarise(entry)
            entry.save(update_fields=["outcomes", "result", "error", "awaiting_convergence"])


def note_converged(reached: Iterable[tuple[str, str, str, dt.datetime]]) -> int:
    """Placements that reached a state ``(app, environment, status, when)``. The newest request
    of each app that asked for that state there and failed or was not delivered has
    ``converged later``; a pending start or stop still waiting for that environment (its
    command lost with a Redis restarted empty, say) is ``ok`` there once a report made after
    the request shows the state. A restart needs its own acknowledgement: "running" proves
    nothing about it. Returns how many entries changed; one query when nothing waits."""
    by_app: dict[str, dict[str, tuple[str, dt.datetime]]] = {}
    for app, env, status, at in reached:
        by_app.setdefault(app, {})[env] = (status, at)
    if not by_app:
        return 0
    changed = 0
    waiting = Q(awaiting_convergence=True) | Q(result=AuditEntry.Result.PENDING, action__in=("start", "stop"))
    with transaction.atomic():
        for entry in AuditEntry.objects.select_for_update().filter(waiting, app_name__in=by_app).exclude(request_id=""):
            wanted = CONVERGING.get(entry.action)
            touched = False
            for env, (status, at) in by_app[entry.app_name].items():
                if status != wanted or env not in entry.environments:
                    continue
                before = entry.outcomes.get(env)
                if before in _FAILED and entry.awaiting_convergence:
                    entry.outcomes[env] = Outcome.CONVERGED_LATER
                elif before is None and entry.result == AuditEntry.Result.PENDING and at > entry.at:
                    entry.outcomes[env] = Outcome.OK
                else:
                    continue
                touched = True
            if touched:
                _summarise(entry)
                entry.save(update_fields=["outcomes", "result", "awaiting_convergence"])
                changed += 1
    return changed


def supersede_older(app_name: str) -> None:
    """A new request for the app: its older requests no longer converge (the new one decides)."""
    AuditEntry.objects.filter(app_name=app_name, awaiting_convergence=True).update(awaiting_convergence=False)
