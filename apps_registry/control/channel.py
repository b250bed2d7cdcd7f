"""The Redis protocol between the supervisor and the workers' agents: key names, command
messages, events and acknowledgements (see docs/protocol.md).

Commands go supervisor → worker on one stream per environment (``P:cmd:<env>``, consumer
group ``agent``), so a command sent while the worker is down waits for it. Everything the
workers report (registration, heartbeats, statuses, acknowledgements) goes on one stream
(``P:events``, consumer group ``supervisor``). Each acknowledgement is also pushed to a
short-lived list ``P:ack:<command id>`` so that whoever sent the command can block on it.
"""

from __future__ import annotations

import json
import re
import time
import uuid

from django.conf import settings

from apps_registry.control import redis_client

ACTIONS = ("start", "stop", "restart", "remove")
RESULTS = ("ok", "error", "expired", "superseded")
EVENT_TYPES = ("register", "heartbeat", "deregister", "status", "ack")
AGENT_GROUP = "agent"
SUPERVISOR_GROUP = "supervisor"

# Streams are trimmed approximately: old, long-acknowledged entries go, recent ones stay.
COMMAND_STREAM_MAXLEN = 10_000
EVENTS_MAXLEN = 100_000
ACK_TTL = 600
# Processed command ids are remembered this long, so a redelivery does nothing twice.
DONE_TTL = 7 * 24 * 3600

# Command ids become Redis key parts: keep them to a harmless alphabet.
COMMAND_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,80}$")

# A blocking call must return before the client's socket timeout (5 s) fires.
_MAX_BLOCK = 4.0


def command_stream(env: str) -> str:
    return redis_client.key("cmd", env)


def events_stream() -> str:
    return redis_client.key("events")


def ack_key(command_id: str) -> str:
    return redis_client.key("ack", command_id)


def status_key(app: str) -> str:
    return redis_client.key("status", app)


def seen_key() -> str:
    return redis_client.key("env", "seen")


def env_info_key(env: str) -> str:
    return redis_client.key("env", "info", env)


def done_key(env: str, command_id: str) -> str:
    return redis_client.key("done", env, command_id)


def generations_key(env: str) -> str:
    return redis_client.key("gen", env)


def encode_event(event_type: str, payload: dict) -> dict[str, str]:
    """Stream fields of one event: its type, and its payload as one JSON document."""
    return {"type": event_type, "data": json.dumps(payload, separators=(",", ":"), default=str)}


def send_command(
    env: str,
    action: str,
    app: str,
    *,
    generation: int,
    request_id: str,
    drop_data: bool = False,
    ttl: float | None = None,
) -> str:
    """Append a command to the environment's stream and return its id.

    ``ttl`` (default APP_COMMAND_TTL) bounds how long a worker that is down may take to
    pick it up; a later pickup acknowledges it ``expired`` instead of running it.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown command action {action!r}")
    command_id = uuid.uuid4().hex
    now = time.time()
    ttl = settings.APP_CONFIG.command_ttl if ttl is None else ttl
    fields = {
        "id": command_id,
        "action": action,
        "app": app,
        "generation": str(int(generation)),
        "request_id": request_id,
        "issued_at": f"{now:.6f}",
        "expires_at": f"{now + ttl:.6f}",
        "drop_data": "1" if drop_data else "0",
    }
    redis_client.commands().xadd(command_stream(env), fields, maxlen=COMMAND_STREAM_MAXLEN, approximate=True)
    return command_id


def wait_for_ack(command_id: str, timeout: float) -> dict | None:
    """Block until the command's acknowledgement arrives; None after ``timeout`` seconds.

    The acknowledgement stays in its list (for other waiters) until the list expires.
    """
    client = redis_client.commands()
    key = ack_key(command_id)
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            found = client.lindex(key, 0)
            return json.loads(found) if found else None
        popped = client.blpop([key], timeout=min(remaining, _MAX_BLOCK))
        if popped:
            raw = popped[1]
            # Put it back for anybody else waiting on the same command.
            client.rpush(key, raw)
            return json.loads(raw)
