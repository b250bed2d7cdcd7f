"""Waiting out a Redis outage: capped doubling backoff, one log line when Redis is lost and one
when it is back (the agent's ``worker_agent/agent/link.py`` policy, for the supervisor's side,
which must not import worker_agent)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

BACKOFF_FIRST = 0.25
BACKOFF_CAP = 5.0
# Sleeps are cut into slices this long so a stop request is noticed promptly.
_SLICE = 0.1


class Backoff:
    """Delays of 0.25 s doubling up to 5 s between failed tries; ``reset`` after a success."""

    def __init__(self, first: float = BACKOFF_FIRST, cap: float = BACKOFF_CAP) -> None:
        self._first = first
        self._cap = cap
        self._delay = first

    def reset(self) -> None:
        self._delay = self._first

    def next_delay(self) -> float:
        delay = self._delay
        self._delay = min(self._delay * 2, self._cap)
        return delay


class Outage:
    """Whether Redis is currently lost, for one long-running process, logged once per change."""

    def __init__(self, what: str, logger: logging.Logger) -> None:
        self.what = what
        self.log = logger
        self.down = False

    def lost(self, error: Exception) -> None:
        if not self.down:
            self.down = True
            self.log.warning("%s: Redis connection lost (%s); waiting for it with backoff", self.what, error)

    def restored(self) -> None:
        if self.down:
            self.down = False
            self.log.warning("%s: Redis connection restored", self.what)

    def wait_until_back(
        self, probe: Callable[[], object], stopping: Callable[[], bool], deadline: float | None = None
    ) -> bool:
        """Run ``probe`` (e.g. a PING) until Redis takes it: True then; False if ``stopping()``
        turns true or the monotonic ``deadline`` passes first. Without a deadline it waits out
        any outage: a process that would rather exit has its launcher restart it, which a
        queue worker must not need."""
        backoff = Backoff()
        while not stopping():
            try:
                probe()
            except redis.RedisError as error:
                self.lost(error)
                pause_until = time.monotonic() + backoff.next_delay()
                if deadline is not None and pause_until > deadline:
                    return False
                while not stopping() and time.monotonic() < pause_until:
                    time.sleep(min(_SLICE, max(0.0, pause_until - time.monotonic())))
                continue
            self.restored()
            return True
        return False
