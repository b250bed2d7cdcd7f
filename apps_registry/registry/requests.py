"""Request and audit bookkeeping: every action's audit entry, and closing it with its outcome.

An operator's request (start, stop, …) gets a request id and an audit entry ``pending`` until its
outcome is known; ``close_request`` is the one way it is closed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from django.contrib.auth.models import AbstractBaseUser

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


def close_request(request_id: str, *, error: str = "", override: bool = False) -> None:
    """Close a request's audit entry: ``ok``, or ``error`` with the reason.

    Only a ``pending`` entry is closed unless ``override``: the start job's verdict, once it
    has seen every environment settle, replaces an earlier close by one environment's
    acknowledgement (which sees only itself); a request whose commands could not go out
    (Redis unavailable after commit) is closed as such even if, like a delete, it was
    recorded ``ok`` up front."""
    entries = AuditEntry.objects.filter(request_id=request_id)
    if not override:
        entries = entries.filter(result=AuditEntry.Result.PENDING)
    entries.update(result=AuditEntry.Result.ERROR if error else AuditEntry.Result.OK, error=error)
