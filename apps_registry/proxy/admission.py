"""How many proxied requests run at once in this supervisor process: at most
``PROXY_APP_CONCURRENCY`` for any one app and ``PROXY_CONCURRENCY`` for all apps together.

Under gunicorn's gthread worker every request in flight holds one of the process's threads
for as long as the worker takes to answer and the client takes to read; without a bound, one
busy or stalled app takes every thread and the admin, the API, ``/healthz`` and every other
app wait behind it. A request beyond either bound is refused at once (503 with
``Retry-After``) instead of queueing; the threads above ``PROXY_CONCURRENCY`` stay for the
supervisor's own pages. Under gunicorn's gevent worker (the supervisor's default) a request
costs a greenlet instead; the per-app bound still keeps one app from crowding out the others
in the process's upstream pools and on the workers.

Counted per process, in memory: a Redis counter would cost two round trips per request and
leak counts when a process dies mid-request, and each process's threads are what the bound
protects anyway. A deployment with N gunicorn processes admits up to N × the bound per app.
"""

from __future__ import annotations

import threading


class Ticket:
    """One admitted request; ``release()`` (idempotent) gives its place back."""

    __slots__ = ("_gate", "_name", "_released")

    def __init__(self, gate: Gate, name: str) -> None:
        self._gate = gate
        self._name = name
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._gate._leave(self._name)


class Gate:
    """The counters, under one lock (a few dictionary operations per request)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._per_app: dict[str, int] = {}
        self._total = 0

    def enter(self, name: str, per_app: int, total: int) -> Ticket | None:
        """A ticket, or None when ``name`` already has ``per_app`` requests in flight or the
        process ``total``."""
        with self._lock:
            current = self._per_app.get(name, 0)
            if current >= per_app or self._total >= total:
                return None
            self._per_app[name] = current + 1
            self._total += 1
        return Ticket(self, name)

    def _leave(self, name: str) -> None:
        with self._lock:
            left = self._per_app.get(name, 0) - 1
            if left > 0:
                self._per_app[name] = left
            else:
                self._per_app.pop(name, None)  # only apps with requests in flight are kept
            self._total = max(0, self._total - 1)

    def in_flight(self, name: str | None = None) -> int:
        with self._lock:
            return self._total if name is None else self._per_app.get(name, 0)


GATE = Gate()
