"""Everything the agent reports, and the one place that appends to ``P:events``: registration
and heartbeat (with the lease), the lease alone, deregistration, statuses, acknowledgements.
Every one of them is signed with this environment's key (``identity``; docs/security.md)."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable

import redis

from apps_registry.control import keys, protocol
from worker_agent.agent.identity import Identity
from worker_agent.agent.link import RedisLink

log = logging.getLogger("worker_agent.agent")

# A lease outlives its beats by this much, so "offline since …" can still say when the agent
# was last seen; liveness looks only at the signed time in it.
LEASE_KEEP = 24 * 3600

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
        identity: Identity,
    ) -> None:
        self.link = link
        self.identity = identity
        self._lease_key = keys.lease(env, identity.fingerprint)
        self.env = env
        self.url = url
        self.proxy_url = proxy_url
        self.version = version
        self.host = socket.gethostname()
        self._running_apps = running_apps

    def _signed(self, message: protocol.Event) -> dict[str, str]:
        return protocol.sign_event(message, self.identity.key, self.identity.public)

    def _xadd(self, target: Target, message: protocol.Event) -> dict[str, str]:
        fields = self._signed(message)
        target.xadd(keys.events_stream(), fields, maxlen=protocol.EVENTS_MAXLEN, approximate=True)
        return fields

    # --- liveness: raise RedisError, the lease thread retries ---------------------------------

    def renew_lease(self, target: Target | None = None) -> None:
        """Write a lease signed with this environment's key, stamped with the Redis server's
        clock (read first with TIME: a signature cannot be made inside Redis), so every
        environment's age is measured on one clock and a worker whose clock drifts is not
        shown offline."""
        seconds, micros = self.link.client.time()
        lease = protocol.Lease(env=self.env, at=seconds + micros / 1e6)
        # Not ``target or ...``: a pipeline with nothing queued yet is falsy.
        client = self.link.client if target is None else target
        client.set(self._lease_key, lease.encode(self.identity.key), ex=LEASE_KEEP)

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
        pipe.delete(self._lease_key)
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
            # Signed when written, with the time of writing: a retry after a long outage of
            # Redis must not look like an old message copied again.
            pipe = self.link.client.pipeline(transaction=True)
            fields = self._xadd(pipe, dataclasses.replace(ack, at=time.time()))
            pipe.lpush(keys.ack(ack.id), protocol.signed_ack_json(fields))
            pipe.expire(keys.ack(ack.id), protocol.ACK_TTL)
            pipe.set(keys.done(self.env, ack.id), ack.result, ex=protocol.DONE_TTL)
            if ack.app and generation is not None:
                field = keys.generation_field(ack.app, ack.incarnation or "")
                pipe.hset(keys.generations(self.env), field, generation)
            pipe.xack(keys.command_stream(self.env), protocol.AGENT_GROUP, entry_id)
            pipe.execute()

        return self.link.retry(write)
