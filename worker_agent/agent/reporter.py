"""Everything the agent reports, and the one place that appends to ``P:events``: registration
and heartbeat (with the lease), the lease alone, deregistration, statuses, acknowledgements."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable

import redis

from apps_registry.control import keys, protocol
from worker_agent.agent.link import RedisLink

log = logging.getLogger("worker_agent.agent")

# The lease is stamped with the Redis server's clock, not this host's: every environment's
# age is then measured on one clock, and a worker whose clock drifts is not shown offline.
_RENEW_LEASE = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], t[1] + t[2] / 1000000, ARGV[1])
return t[1]
"""

Target = redis.Redis | redis.client.Pipeline


class Reporter:
    def __init__(
        self,
        link: RedisLink,
        *,
        env: str,
        url: str,
        proxy_url: str,
        version: str,
        running_apps: Callable[[], Iterable[str]],
    ) -> None:
        self.link = link
        self.env = env
        self.url = url
        self.proxy_url = proxy_url
        self.version = version
        self.host = socket.gethostname()
        self._running_apps = running_apps
        self._renew = link.client.register_script(_RENEW_LEASE)

    def _xadd(self, target: Target, message: protocol.Event) -> None:
        target.xadd(keys.events_stream(), message.encode(), maxlen=protocol.EVENTS_MAXLEN, approximate=True)

    # --- liveness: raise RedisError, the lease thread retries ---------------------------------

    def renew_lease(self, target: Target | None = None) -> None:
        # Not ``target or ...``: a pipeline with nothing queued yet is falsy.
        self._renew(keys=[keys.seen()], args=[self.env], client=self.link.client if target is None else target)

    def announce(self, *, heartbeat: bool) -> None:
        """``register`` or ``heartbeat``: the whole description, with a lease beat."""
        registration = protocol.Registration(
            env=self.env,
            url=self.url,
            proxy_url=self.proxy_url,
            version=self.version,
            host=self.host,
            pid=os.getpid(),
            apps_running=tuple(sorted(self._running_apps())),
            at=time.time(),
            heartbeat=heartbeat,
        )
        pipe = self.link.client.pipeline(transaction=False)
        self.renew_lease(pipe)
        self._xadd(pipe, registration)
        pipe.execute()

    def deregister(self) -> None:
        pipe = self.link.client.pipeline(transaction=False)
        pipe.zrem(keys.seen(), self.env)
        self._xadd(pipe, protocol.Deregistration(env=self.env, at=time.time()))
        pipe.execute()

    # --- statuses: a Redis failure is logged, never raised --------------------------------------

    def status(self, app: str, status: str, error: str = "", incarnation: str = "") -> None:
        """Report an app's status here (of its ``incarnation``: the supervisor ignores the
        reports of a deleted one)."""
        report = protocol.StatusReport(app, self.env, status, error, time.time(), incarnation=incarnation)
        try:
            self._xadd(self.link.client, report)
        except redis.RedisError as error_:
            self.link.lost(error_)

    def actual(self, app: str, incarnation: str = "") -> None:
        """After a command that changed nothing, say what the app's state really is here."""
        self.status(app, "running" if app in self._running_apps() else "stopped", incarnation=incarnation)

    def running(self) -> None:
        """Re-report every app running here (after a registration: Redis may have lost them)."""
        for app in self._running_apps():
            self.status(app, "running")

    # --- acknowledgements -----------------------------------------------------------------------

    def acknowledge(self, ack: protocol.Ack, entry_id: str, generation: int | None) -> bool:
        """In one MULTI: the ack event, the ack list for waiters, the done marker, the app's
        newest generation (if given), then the XACK of the entry; retried until Redis takes it.
        False if the agent stopped first (the entry stays pending and comes back)."""

        def write() -> None:
            pipe = self.link.client.pipeline(transaction=True)
            self._xadd(pipe, ack)
            pipe.lpush(keys.ack(ack.id), ack.to_json())
            pipe.expire(keys.ack(ack.id), protocol.ACK_TTL)
            pipe.set(keys.done(self.env, ack.id), ack.result, ex=protocol.DONE_TTL)
            if ack.app and generation is not None:
                field = keys.generation_field(ack.app, ack.incarnation or "")
                pipe.hset(keys.generations(self.env), field, generation)
            pipe.xack(keys.command_stream(self.env), protocol.AGENT_GROUP, entry_id)
            pipe.execute()

        return self.link.retry(write)
