"""Requests being served, per app, across the web processes of this environment: a shared
``flock`` on ``<storage>/runtime/<env>.serving/<app>.lock`` for each request, so that a stop
can wait until no web process serves the app any more before it is reported ``stopped``.

The order makes it exact. A request takes its shared lock *before* it reads the app's state
and holds it until the view returns; a stop writes ``stopped`` to the state file first and
then takes the exclusive lock. Once the stop has had it, every request admitted under the old
state has finished, and every later one reads ``stopped`` (the file changed before) and is
refused. A request for an app that does not run here releases its lock at once, so refused
requests cannot hold a stop up. A streaming response's body is sent after the view returns,
outside the lock.

Nothing here blocks the process: under gunicorn's gevent worker (the workers' default) a
blocking ``flock`` would stall every greenlet of the process, not just the request's. Both
sides ask with ``LOCK_NB`` and wait by polling ``time.sleep``, which gevent makes cooperative
(and which releases the GIL under threads). A request waits only while a stop holds the
exclusive lock, which it does for one system call (it takes it without waiting and lets go at
once), so the request's first retry almost always has it; ``ADMIT_TIMEOUT`` bounds the wait
should anything else ever hold the file, and the request is then refused (``Busy``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from worker_agent.hosting import local_state

log = logging.getLogger(__name__)

POLL = 0.005
# A request polls faster: it waits only for the instant a stop holds the exclusive lock.
ADMIT_POLL = 0.001
# ... and gives up after this long (refused as busy: it was not admitted, nothing ran).
ADMIT_TIMEOUT = 5.0
# A stop waits at most this long for requests in flight (a long upload, say), then reports
# anyway: a stuck request must not keep the app's status at ``stopping`` for ever.
DRAIN_TIMEOUT = 30.0


def lock_path(name: str) -> Path:
    state = local_state.state_path()
    return state.parent / f"{state.stem}.serving" / f"{name}.lock"


def _open(name: str) -> int:
    path = lock_path(name)
    try:
        return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)


class Busy(Exception):
    """The app's lock stayed exclusively held for ``ADMIT_TIMEOUT``: the request is not admitted."""


@contextlib.contextmanager
def serving(name: str, timeout: float | None = None) -> Iterator[None]:
    """Hold the app's shared lock for a request (its own descriptor: a flock belongs to the
    open file, so threads or greenlets sharing one would release each other's); ``Busy`` if
    it is not had within ``timeout`` (``ADMIT_TIMEOUT`` by default)."""
    fd = _open(name)
    try:
        deadline = time.monotonic() + (ADMIT_TIMEOUT if timeout is None else timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Busy(f"app {name}: its serving lock stayed exclusively held") from None
                time.sleep(ADMIT_POLL)
        yield
    finally:
        os.close(fd)  # releases the lock


def wait_drained(name: str, timeout: float = DRAIN_TIMEOUT) -> bool:
    """Wait until no request of ``name`` is being served here (the state file must already
    say the app does not run); False if some were still running after ``timeout``."""
    fd = _open(name)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    log.warning("app %s: requests still in flight after %g s; reporting it stopped", name, timeout)
                    return False
                time.sleep(POLL)
    finally:
        os.close(fd)
