"""The agent's Redis connection: whether it answers, and the one retry policy (capped doubling).

A lost link is logged once ("Redis connection lost"), not once per try, and its return once
("Redis connection restored"); every return bumps ``generation`` so that the threads which
depend on server-side state (registration, consumer group) set it up again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from apps_registry.control import redis_client

log = logging.getLogger("worker_agent.agent")

BACKOFF_FIRST = 0.25
BACKOFF_CAP = 5.0


class Backoff:
    """Waits of 0.25 s doubling up to 5 s between failed tries; ``reset`` after a success."""

    def __init__(self, stopping: threading.Event) -> None:
        self._stopping = stopping
        self._delay = BACKOFF_FIRST

    def reset(self) -> None:
        self._delay = BACKOFF_FIRST

    def wait(self) -> bool:
        """Wait the current delay (cut short by a stop) and double it; True if stopping."""
        stopped = self._stopping.wait(self._delay)
        self._delay = min(self._delay * 2, BACKOFF_CAP)
        return stopped


class RedisLink:
    """The command Redis (``APP_COMMAND_REDIS_URL``) and whether it currently answers."""

    def __init__(self, stopping: threading.Event) -> None:
        self.client: redis.Redis = redis_client.commands()
        self.stopping = stopping
        self._lock = threading.Lock()
        self.up = True
        self.generation = 0  # bumped at every restore: threads re-register/re-subscribe

    def lost(self, error: Exception) -> None:
        with self._lock:
            if self.up:
                self.up = False
                log.warning("Redis connection lost (%s); retrying with backoff, apps keep serving", error)

    def ok(self) -> None:
        with self._lock:
            if not self.up:
                self.up = True
                self.generation += 1
                log.warning("Redis connection restored; registering again")

    def retry(self, operation: Callable[[], object]) -> bool:
        """Run ``operation`` until Redis takes it; False if the agent stops first."""
        backoff = Backoff(self.stopping)
        while True:
            try:
                operation()
            except redis.RedisError as error:
                self.lost(error)
                if backoff.wait():
                    return False
                continue
            self.ok()
            return True
