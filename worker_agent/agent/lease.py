"""The lease thread: renews the lease every ``APP_LEASE_INTERVAL``, sends the full heartbeat
every ``APP_HEARTBEAT_INTERVAL``, registers again after Redis comes back, and deregisters
when the agent stops. On its own thread, so a long command never delays the lease."""

from __future__ import annotations

import logging
import threading
import time

import redis

from worker_agent.agent.link import Backoff, RedisLink
from worker_agent.agent.reporter import Reporter

log = logging.getLogger("worker_agent.agent")


def run_lease(
    link: RedisLink,
    reporter: Reporter,
    stopping: threading.Event,
    *,
    lease_interval: float,
    heartbeat_interval: float,
) -> None:
    registered_for = -1
    next_heartbeat = 0.0
    backoff = Backoff(stopping)
    while not stopping.is_set():
        try:
            now = time.monotonic()
            if registered_for != link.generation:
                reporter.announce(heartbeat=False)
                link.ok()
                registered_for = link.generation
                next_heartbeat = now + heartbeat_interval
                reporter.running()
            elif now >= next_heartbeat:
                reporter.announce(heartbeat=True)
                next_heartbeat = now + heartbeat_interval
            else:
                reporter.renew_lease()
            link.ok()
        except redis.RedisError as error:
            link.lost(error)
            registered_for = -1
            backoff.wait()
            continue
        backoff.reset()
        stopping.wait(lease_interval)
    try:
        reporter.deregister()
        log.info("deregistered environment %s", reporter.env)
    except redis.RedisError as error:
        log.warning("could not deregister (Redis unavailable: %s)", error)
