"""The supervisor's end of the command channel (see docs/protocol.md).

Commands go supervisor -> worker on one stream per environment (``P:cmd:<env>``, consumer
group ``agent``), so a command sent while the worker is down waits for it. Each
acknowledgement is also pushed to a short-lived list ``P:ack:<command id>`` so that whoever
sent the command can block on it. The messages are those of ``protocol``, the keys those of
``keys``.
"""

from __future__ import annotations

import time

from django.conf import settings

from apps_registry.control import keys, protocol, redis_client

# A blocking call must return before the client's socket timeout (5 s) fires.
_MAX_BLOCK = 4.0


def send_command(
    env: str,
    action: str,
    app: str,
    *,
    generation: int,
    request_id: str,
    drop_data: bool = False,
    ttl: float | None = None,
    incarnation: str = "",
) -> str:
    """Append a command to the environment's stream and return its id.

    ``ttl`` (default APP_COMMAND_TTL) bounds how long a worker that is down may take to
    pick it up; a later pickup acknowledges it ``expired`` instead of running it.
    """
    command = protocol.Command.new(
        action,
        app,
        generation=generation,
        request_id=request_id,
        drop_data=drop_data,
        ttl=settings.APP_CONFIG.command_ttl if ttl is None else ttl,
        incarnation=incarnation,
    )
    redis_client.commands().xadd(
        keys.command_stream(env), command.encode(), maxlen=protocol.COMMAND_STREAM_MAXLEN, approximate=True
    )
    return command.id


def wait_for_ack(command_id: str, timeout: float) -> dict | None:
    """Block until the command's acknowledgement arrives (its JSON object, as
    ``protocol.Ack.data()``); None after ``timeout`` seconds.

    The acknowledgement stays in its list (for other waiters) until the list expires.
    """
    client = redis_client.commands()
    key = keys.ack(command_id)
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            found = client.lindex(key, 0)
            return protocol.Ack.from_json(found).data() if found else None
        popped = client.blpop([key], timeout=min(remaining, _MAX_BLOCK))
        if popped:
            raw = popped[1]
            # Put it back for anybody else waiting on the same command.
            client.rpush(key, raw)
            return protocol.Ack.from_json(raw).data()
