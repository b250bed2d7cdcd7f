"""Per-app figures of this worker: each hosted app's requests, 5xx errors and latency per minute,
added to a hash per app, minute and environment (``keys.app_figures``), and its database size
(``keys.app_database_size``); docs/protocol.md, "Per-app figures".

As with the log lines (``app_logs``), measuring must never slow or break a request: ``record``
only puts a tuple on a bounded in-memory queue (a full queue drops it, counted) and one daemon
thread per process sums what it drains and adds it with one ``MULTI … HINCRBY … EXEC`` per
batch, so every process of the environment adds to the same minute and the supervisor never
sees half a batch. Memory is bounded: the queue, and per batch one counter per app and minute.

The minute is Redis's, not this host's: the writer reads Redis ``TIME`` once a minute and keeps
the offset, so the supervisor (which reads with Redis's clock too) and every worker agree on
which minute a request belongs to whatever their own clocks say.

The database size is measured here, where the app's database is reachable (the supervisor may
not reach the workers' database servers): by the writer, for apps it has seen requests of, at
most once per ``DATABASE_SIZE_EVERY`` seconds per app and process, and once after every start
(``database_measured``, called by the runtime).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import Counter

import redis
from django.conf import settings

from apps_registry.control import keys, protocol, redis_client
from worker_agent.hosting import app_databases

log = logging.getLogger(__name__)

QUEUE_SIZE = 5000
BATCH = 1000
DATABASE_SIZE_EVERY = 60.0
CLOCK_EVERY = 60.0

_queue: queue.Queue[tuple] = queue.Queue(maxsize=QUEUE_SIZE)
_lock = threading.Lock()
_writer_pid = 0
dropped = 0  # requests (or measurements) lost in this process: full queue or Redis unreachable


def enabled() -> bool:
    config = settings.APP_CONFIG
    return config.mode == "worker" and config.uses_redis


def record(app: str, status: int, elapsed_ms: float, db: app_databases.AppDatabase | None = None) -> None:
    """Count one request of ``app``; returns at once, whatever Redis does. ``db`` (the app's
    database) lets the writer measure its size now and then."""
    _put(("request", app, int(status) >= 500, protocol.latency_bucket(elapsed_ms), time.time(), db))


def database_measured(db: app_databases.AppDatabase) -> None:
    """Measure and publish the app's database size soon (after a start), whatever the throttle."""
    _put(("database", db.app, False, 0, time.time(), db))


def _put(item: tuple) -> None:
    global dropped
    if not enabled():
        return
    _ensure_writer()
    try:
        _queue.put_nowait(item)
    except queue.Full:
        dropped += 1


def _ensure_writer() -> None:
    # Per process: a gunicorn worker forked from a master that recorded has no thread of its own.
    global _writer_pid
    if _writer_pid == os.getpid():
        return
    with _lock:
        if _writer_pid == os.getpid():
            return
        _writer_pid = os.getpid()
        threading.Thread(target=Writer().run_forever, name="app-figures", daemon=True).start()


class Writer:
    """Drains the queue into Redis (one per process; tests drive ``write`` directly)."""

    def __init__(self) -> None:
        self.offset = 0.0  # Redis's clock minus this host's
        self.clock_read_at = float("-inf")
        self.measured_at: dict[str, float] = {}  # app -> monotonic time of its last size

    def run_forever(self) -> None:
        global dropped
        failing = False
        while True:
            batch = [_queue.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(_queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self.write(batch)
            except (redis.RedisError, OSError):
                dropped += len(batch)
                if not failing:
                    failing = True
                    log.warning("app figures cannot be written to Redis: dropping them until it is back")
                time.sleep(0.5)  # an outage: do not spin on a queue that refills
                continue
            if failing:
                failing = False
                log.warning("app figures are written to Redis again")

    def _redis_now_offset(self, client: redis.Redis) -> float:
        if time.monotonic() - self.clock_read_at >= CLOCK_EVERY:
            seconds, micros = client.time()
            self.offset = seconds + micros / 1e6 - time.time()
            self.clock_read_at = time.monotonic()
        return self.offset

    def write(self, batch: list[tuple]) -> None:
        """Add a batch of requests (and measure the databases due) in one transaction."""
        env = settings.APP_CONFIG.environment_name
        client = redis_client.commands()
        offset = self._redis_now_offset(client)
        sums: dict[tuple[str, int], Counter] = {}
        to_measure: dict[str, app_databases.AppDatabase] = {}
        now = time.monotonic()
        for kind, app, error, bucket, at, db in batch:
            if kind == "request":
                counter = sums.setdefault((app, int((at + offset) // 60)), Counter())
                counter["requests"] += 1
                counter["errors"] += int(error)
                counter[f"b{bucket}"] += 1
                due = now - self.measured_at.get(app, float("-inf")) >= DATABASE_SIZE_EVERY
            else:
                due = True
            if db is not None and due:
                to_measure[app] = db
        sizes = {}
        for app, db in to_measure.items():
            self.measured_at[app] = now
            try:
                sizes[app] = app_databases.size_bytes(db)
            except app_databases.DatabaseError as error:
                log.warning("app figures: %s", error)
        pipe = client.pipeline(transaction=True)
        for (app, minute), counter in sums.items():
            key = keys.app_figures(app, minute, env)
            for field, count in counter.items():
                if count:
                    pipe.hincrby(key, field, count)
            pipe.expire(key, protocol.FIGURES_TTL)
        for app, size in sizes.items():
            key = keys.app_database_size(app, env)
            pipe.hset(key, mapping={"bytes": size, "at": f"{time.time() + offset:.0f}"})
            pipe.expire(key, protocol.DATABASE_SIZE_TTL)
        if sums or sizes:
            pipe.execute()
