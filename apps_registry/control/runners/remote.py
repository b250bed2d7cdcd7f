"""Process adapters: how the supervisor gets apps started and stopped.

``remote`` (APP_MODE=supervisor) drives the workers' agents through the command channel:
stop, restart and remove go to every environment at once; a start goes to one environment
after another, each waiting for the previous one's acknowledgement, because a first start
initialises the app's shared database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from django.conf import settings

from apps_registry.control import channel, ingest, liveness, redis_client
from apps_registry.control.start_queue.enqueue import enqueue_start
from apps_registry.control.start_queue.job import Undelivered
from apps_registry.models import Application, Environment

log = logging.getLogger(__name__)

# While waiting for a start to be acknowledged, how often to check the environment is alive.
_ACK_POLL = 1.0


def _environment_alive(env: str) -> bool:
    """True if the environment's agent renewed its lease recently (or Redis cannot tell)."""
    bound = Environment.objects.filter(name=env).values_list("public_key", flat=True).first() or ""
    if not bound:  # not bound to a key yet (its first signed message will): no lease to check
        return True
    try:
        seen = liveness.lease_seconds({env: bound})
    except Exception:  # no answer is not evidence of death
        return True
    if seen is None:
        return True
    # Lease times are the Redis server's: compare on its clock.
    return env in seen and time.time() - ingest.last_clock_offset() - seen[env] <= settings.APP_CONFIG.offline_after


def start_on_environment(app_name: str, env: str, *, generation: int, request_id: str, timeout: float) -> str | None:
    """Send the start to one environment and wait for the worker's acknowledgement.

    The caller has marked the placement ``starting`` and wanted running, and published the
    app's spec, under the app's row lock (``actions.begin_environment_start``), so the worker's
    reconciliation agrees. A request that supersedes this one meanwhile carries a newer
    generation, and the worker drops this start if it has seen that one. Returns None on
    success (or when superseded), or an error message; the worker's status reports are applied
    by the caller's next ``events.ingest()``.
    """
    # The app's incarnation now: a start of a name deleted and created again is for the new app.
    incarnation = Application.objects.filter(name=app_name).values_list("incarnation", flat=True).first()
    command_id = channel.send_command(
        env, "start", app_name, generation=generation, request_id=request_id, incarnation=str(incarnation or "")
    )
    deadline = time.monotonic() + timeout
    ack = None
    while ack is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ack = channel.wait_for_ack(command_id, min(remaining, _ACK_POLL), env=env)
        if ack is None and not _environment_alive(env):
            return Undelivered(
                f"environment {env} is not responding; the start command stays queued there "
                f"until the worker returns or the command expires"
            )
    if ack is None:
        return f"no acknowledgement from {env} within {timeout:g} s"
    if ack.get("result") in ("ok", "superseded"):
        return None
    if ack.get("result") == "expired":
        return f"the start command expired before {env} picked it up"
    return ack.get("error") or f"start failed on {env}"


class RemoteProcessAdapter:
    """Commands to the workers over Redis."""

    def check_channel(self) -> None:
        """Raise a Redis error if the command channel cannot be reached now."""
        redis_client.commands().ping()

    def start(self, app_pk: int, environments: Sequence[str], *, generation: int, request_id: str) -> None:
        """Queue the start on ``app_starts`` (called after commit); the job walks the
        environments one after another under the app's lock (``apps_registry.control.start_queue``)."""
        found = Application.objects.filter(pk=app_pk).values_list("name", "incarnation").first()
        if found is None:
            return
        name, incarnation = found
        enqueue_start(name, environments, generation=generation, request_id=request_id, incarnation=str(incarnation))

    def _send(self, action: str, name: str, environments: Sequence[str], **fields) -> list[str]:
        return [channel.send_command(env, action, name, **fields) for env in environments]

    def stop(
        self, name: str, environments: Sequence[str], *, generation: int, request_id: str, incarnation: str = ""
    ) -> list[str]:
        fields = {"generation": generation, "request_id": request_id, "incarnation": incarnation}
        return self._send("stop", name, environments, **fields)

    def restart(
        self, name: str, environments: Sequence[str], *, generation: int, request_id: str, incarnation: str = ""
    ) -> list[str]:
        fields = {"generation": generation, "request_id": request_id, "incarnation": incarnation}
        return self._send("restart", name, environments, **fields)

    def remove(
        self,
        name: str,
        environments: Sequence[str],
        *,
        generation: int,
        request_id: str,
        drop_data: bool,
        incarnation: str = "",
    ) -> list[str]:
        fields = {"generation": generation, "request_id": request_id, "incarnation": incarnation}
        return self._send("remove", name, environments, drop_data=drop_data, **fields)
