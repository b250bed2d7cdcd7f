"""Per-app log lines of this worker: each hosted app's requests, errors, starts and stops,
appended to a capped Redis stream per app and environment (``keys.app_log``, docs/protocol.md).

Writing must never slow or break what it describes: ``record`` only puts the line on a bounded
in-memory queue (a full queue drops it) and one daemon thread per process writes batches with a
pipelined ``XADD … MAXLEN ~ APP_LOG_LINES``. At exit the writer is stopped and joined (at most
``EXIT_FLUSH_S``), after writing what is queued: a daemon thread frozen by the interpreter's
finalization in the middle of a write would hold the Redis pool's lock, and the pool's ``__del__``
would then wait for it for ever (``manage.py host_app --stop`` hung at exit that way).
When Redis is unreachable the lines are dropped and
counted; one warning says the writing stopped and one says it came back (with the count), so an
outage does not flood the process log. Without Redis (standalone) nothing is recorded.

Lines are bounded (``MAX_MESSAGE``) and stripped of control characters here, at the source;
the supervisor treats them as untrusted text all the same.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import re
import threading
import time

import redis
from django.conf import settings

from apps_registry.control import keys, redis_client

log = logging.getLogger(__name__)

LEVELS = ("info", "warning", "error")
MAX_MESSAGE = 500
# Lines waiting for the writer: beyond this a burst (or a Redis outage) drops, never blocks.
QUEUE_SIZE = 2000
BATCH = 200
EXIT_FLUSH_S = 2.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")

_queue: queue.Queue[tuple[str, str, str, str] | None] = queue.Queue(maxsize=QUEUE_SIZE)
_STOP = None  # put on the queue at exit: write what came before it, then return
_lock = threading.Lock()
_writer_pid = 0
_writer: threading.Thread | None = None
dropped = 0  # lines lost in this process (full queue or Redis unreachable)


def clean(message: str) -> str:
    """One printable line of at most ``MAX_MESSAGE`` characters."""
    text = _CONTROL.sub(" ", str(message)).strip()
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def enabled() -> bool:
    config = settings.APP_CONFIG
    return config.mode == "worker" and config.uses_redis


def record(app: str, level: str, message: str) -> None:
    """Queue one line of ``app``'s log; returns at once, whatever Redis does."""
    global dropped
    if not enabled():
        return
    _ensure_writer()
    try:
        _queue.put_nowait((app, level if level in LEVELS else "info", clean(message), f"{time.time():.3f}"))
    except queue.Full:
        dropped += 1


def _ensure_writer() -> None:
    # Per process: a gunicorn worker forked from a master that recorded has no thread of its own.
    global _writer_pid, _writer
    if _writer_pid == os.getpid():
        return
    with _lock:
        if _writer_pid == os.getpid():
            return
        _writer_pid = os.getpid()
        _writer = threading.Thread(target=_write_until_stopped, name="app-logs", daemon=True)
        _writer.start()
        atexit.register(_stop_writer)


def _stop_writer() -> None:
    """At exit: let the writer write what is queued and return, waiting ``EXIT_FLUSH_S`` at most."""
    writer = _writer
    if writer is None or _writer_pid != os.getpid() or not writer.is_alive():
        return  # a forked child inherits the handler, not the thread
    try:
        _queue.put(_STOP, timeout=EXIT_FLUSH_S)
    except queue.Full:
        return
    writer.join(EXIT_FLUSH_S)


def _write_until_stopped() -> None:
    global dropped
    failing = False
    lost_since = 0
    stopping = False
    while not stopping:
        batch = []
        item = _queue.get()
        while item is not _STOP:
            batch.append(item)
            if len(batch) == BATCH:
                break
            try:
                item = _queue.get_nowait()
            except queue.Empty:
                break
        stopping = item is _STOP
        if not batch:
            continue
        try:
            write(batch)
        except (redis.RedisError, OSError):
            dropped += len(batch)
            lost_since += len(batch)
            if not failing:
                failing = True
                log.warning("app log lines cannot be written to Redis: dropping them until it is back")
            if not stopping:
                time.sleep(0.5)  # an outage: do not spin on a queue that refills
            continue
        if failing:
            failing = False
            log.warning("app log lines are written to Redis again (%d line(s) dropped meanwhile)", lost_since)
            lost_since = 0


def write(batch: list[tuple[str, str, str, str]]) -> None:
    """Append the lines in one pipelined round trip (also used directly by tests)."""
    env = settings.APP_CONFIG.environment_name
    limit = settings.APP_CONFIG.app_log_lines
    pipe = redis_client.commands().pipeline(transaction=False)
    for app, level, message, at in batch:
        fields = {"at": at, "level": level, "message": message}
        pipe.xadd(keys.app_log(app, env), fields, maxlen=limit, approximate=True)
    pipe.execute()
