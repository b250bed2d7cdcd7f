"""Hands committed registry changes to the adapters.

Actions run inside database transactions; what they tell Redis or the workers must not go
out before the change is committed (or at all if it is rolled back), so every call here is
deferred with ``transaction.on_commit``.

If Redis is unavailable when the callbacks run, the change is committed but a command cannot
go out. A start stays ``queued`` and pending: the start queue's recovery check enqueues it
again once Redis is back. A stop, restart, remove or delete is not delivered: its audit entry
is closed as an error saying so (``NOT_DELIVERED``), and ``NotDelivered`` tells the caller.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import redis
from django.db import connection, transaction

from apps_registry import backends
from apps_registry.models import Application, AuditEntry, ConfigEpoch, Environment
from apps_registry.registry.requests import close_request

log = logging.getLogger(__name__)

NOT_DELIVERED = "not delivered: Redis unavailable"


class NotDelivered(redis.RedisError):
    """A committed request could not be passed on because Redis is unavailable. The message
    says what became of it, for the operator (API 503 body, admin warning)."""


# Requests of this thread's transaction whose commands have not gone out yet: request id →
# (action, app name, environments). A failing callback stops the ones after it (Django runs
# on_commit callbacks in order and gives up at the first exception), so whichever callback
# meets Redis down closes them all.
_local = threading.local()


def _pending() -> dict[str, tuple[str, str, list[str]]]:
    if not hasattr(_local, "requests"):
        _local.requests = {}
    return _local.requests


def require_channel(action: str, app: str) -> None:
    """Refuse, before anything changes, a request that cannot be carried out later from the
    registry alone (a delete: once the app is gone, no worker would learn to unload it)."""
    try:
        backends.runner().check_channel()
    except redis.RedisError as error:
        raise NotDelivered(
            f"Redis (the command channel) is unavailable: the {action} of {app} is refused and nothing was "
            f"changed ({error}); ask again once Redis is back."
        ) from error


def _outcome(action: str, app: str, envs: list[str]) -> str:
    where = ", ".join(envs)
    if action == "stop":
        return (
            f"the registry keeps {app} stopped on {where}; the workers converge to that when they next "
            "read the configuration cache rebuilt from the registry (it is rebuilt when Redis comes back "
            "empty, or with manage.py sync_registry_cache). Check its status once Redis is back."
        )
    if action == "restart":
        return f"{app} was not restarted on {where}: ask again once Redis is back."
    if not Application.objects.filter(name=app).exists():
        return (
            f"{app} is gone from the registry, but {where} were not told to unload it: it keeps running "
            f"there until removed on the worker (manage.py host_app {app} --remove)."
        )
    return (
        f"the registry keeps {app} stopped on {where} (the workers converge to that from the rebuilt "
        "configuration cache), but it is not unloaded there: ask again once Redis is back."
    )


def _close_undelivered(error: Exception) -> NotDelivered | None:
    requests, _local.requests = _pending(), {}
    summaries = []
    for request_id, (action, app, envs) in requests.items():
        if not AuditEntry.objects.filter(request_id=request_id).exists():
            continue  # its transaction was rolled back
        if action == "start":
            summaries.append(
                f"the start of {app} is recorded (queued); the start queue's recovery check enqueues it "
                "again once Redis is back."
            )
            continue
        outcome = _outcome(action, app, envs)
        close_request(
            request_id,
            error=f"{NOT_DELIVERED} ({error}); {outcome}",
            override=True,
            outcome=AuditEntry.Outcome.NOT_DELIVERED,
        )
        summaries.append(f"the {action} of {app} was not delivered: {outcome}")
    if not summaries:
        return None
    log.warning("Redis unavailable after commit: %s", " ".join(summaries))
    return NotDelivered("Redis (the command channel) is unavailable: " + " ".join(summaries))


def _guarded(call: Callable[[], object], request_id: str = "") -> Callable[[], None]:
    """An on_commit callback that, if Redis is unavailable, closes the requests it leaves
    undelivered and raises NotDelivered (or the Redis error if it carried no request)."""

    def run() -> None:
        try:
            call()
        except redis.RedisError as error:
            if isinstance(error, NotDelivered):
                raise
            not_delivered = _close_undelivered(error)
            if not_delivered is None:
                raise
            raise not_delivered from error
        if request_id:
            _pending().pop(request_id, None)

    return run


def _on_commit(call: Callable[[], object], request: tuple[str, str, str, Sequence[str]] | None = None) -> None:
    if not connection.run_on_commit:  # the first callback of a new transaction: forget older ones
        _local.requests = {}
    request_id = ""
    if request is not None:
        request_id, action, app, envs = request
        _pending()[request_id] = (action, app, list(envs))
    transaction.on_commit(_guarded(call, request_id))


def _discovery():
    return backends.discovery()


def _process():
    return backends.runner()


# Every publish takes the next configuration epoch in the change's own transaction and writes
# it into the cache with the change: the cache then says how recent it is, so one restored from
# an older snapshot is recognised (and rebuilt) and agents never act on it.
def publish_app(app: Application) -> None:
    pk, epoch = app.pk, ConfigEpoch.bump()
    _on_commit(lambda: _discovery().publish_app_by_pk(pk, epoch=epoch))


def unpublish_app(name: str) -> None:
    epoch = ConfigEpoch.bump()
    _on_commit(lambda: _discovery().unpublish_app(name, epoch=epoch))


def publish_environment(env: Environment) -> None:
    pk, epoch = env.pk, ConfigEpoch.bump()
    _on_commit(lambda: _discovery().publish_environment_by_pk(pk, epoch=epoch))


def unpublish_environment(name: str) -> None:
    epoch = ConfigEpoch.bump()
    _on_commit(lambda: _discovery().unpublish_environment(name, epoch=epoch))


def send_start(app: Application, environments: Sequence[str], *, generation: int, request_id: str) -> None:
    pk, envs = app.pk, list(environments)
    _on_commit(
        lambda: _process().start(pk, envs, generation=generation, request_id=request_id),
        (request_id, "start", app.name, envs),
    )


def send_stop(app: Application, environments: Sequence[str], *, generation: int, request_id: str) -> None:
    name, envs, incarnation = app.name, list(environments), str(app.incarnation)
    _on_commit(
        lambda: _process().stop(name, envs, generation=generation, request_id=request_id, incarnation=incarnation),
        (request_id, "stop", name, envs),
    )


def send_restart(app: Application, environments: Sequence[str], *, generation: int, request_id: str) -> None:
    name, envs, incarnation = app.name, list(environments), str(app.incarnation)
    _on_commit(
        lambda: _process().restart(name, envs, generation=generation, request_id=request_id, incarnation=incarnation),
        (request_id, "restart", name, envs),
    )


def send_remove(
    app: Application, environments: Sequence[str], *, generation: int, request_id: str, drop_data: bool
) -> None:
    name, envs, incarnation = app.name, list(environments), str(app.incarnation)
    _on_commit(
        lambda: _process().remove(
            name, envs, generation=generation, request_id=request_id, drop_data=drop_data, incarnation=incarnation
        ),
        (request_id, "remove", name, envs),
    )
