"""The supervisor's end of the command channel (see docs/protocol.md).

Commands go supervisor -> worker on one stream per environment (``P:cmd:<env>``, consumer
group ``agent``), so a command sent while the worker is down waits for it. Each
acknowledgement is also pushed to a short-lived list ``P:ack:<command id>`` so that whoever
sent the command can block on it. The messages are those of ``protocol``, the keys those of
``keys``.

Commands are signed with the supervisor's key (``authority``); an acknowledgement on
``P:ack:<id>`` is believed only with the signature of the key its environment is bound to
(``identity``), so a value pushed there by anyone else cannot end a start job's wait.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings

from apps_registry.control import authority, identity, keys, protocol, redis_client

log = logging.getLogger(__name__)

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
    authority.publish()
    fields = protocol.sign_command(command.encode(), env, authority.key())
    redis_client.commands().xadd(
        keys.command_stream(env), fields, maxlen=protocol.COMMAND_STREAM_MAXLEN, approximate=True
    )
    return command.id


def _genuine(raw: str, env: str | None) -> dict | None:
    """The acknowledgement in ``raw`` if its environment's key signed it (and it is from
    ``env`` when given); None, logged and counted, otherwise."""
    try:
        fields = protocol.signed_ack_fields(raw)
        ack = protocol.Ack.decode(fields)
    except protocol.ProtocolError as error:
        identity.refused("unsigned", "?", f"acknowledgement list entry: {error}")
        return None
    if env is not None and ack.env != env:
        identity.refused("wrong_env", ack.env, f"acknowledgement of {ack.id} from {ack.env!r}, expected {env}")
        return None
    if not identity.ack_is_genuine(fields, ack.env):
        return None
    return ack.data()


def wait_for_ack(command_id: str, timeout: float, env: str | None = None) -> dict | None:
    """Block until the command's genuine acknowledgement arrives (its JSON object, as
    ``protocol.Ack.data()``), from ``env`` if given; None after ``timeout`` seconds.

    The acknowledgement stays in its list (for other waiters) until the list expires; a value
    that is not genuine is taken out of it and ignored.
    """
    client = redis_client.commands()
    key = keys.ack(command_id)
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            for found in client.lrange(key, 0, 9):
                ack = _genuine(found, env)
                if ack is not None:
                    return ack
            return None
        popped = client.blpop([key], timeout=min(remaining, _MAX_BLOCK))
        if popped:
            raw = popped[1]
            ack = _genuine(raw, env)
            if ack is not None:
                # Put it back for anybody else waiting on the same command.
                client.rpush(key, raw)
                return ack
