"""The queue worker's side: the RQ job function and the worker class that runs it."""

from __future__ import annotations

import logging
import time
from typing import Any, NoReturn

import redis
import rq
from django.conf import settings
from django.db import close_old_connections
from rq.exceptions import StopRequested

from apps_registry.control import ingest
from apps_registry.control.backups import schedule as backup_schedule
from apps_registry.control.outage import Outage
from apps_registry.control.runners import remote
from apps_registry.control.start_queue.enqueue import forget_pending, pending_value
from apps_registry.control.start_queue.job import StartJob
from apps_registry.control.start_queue.lock import StartLock
from apps_registry.control.start_queue.recovery import recover_throttled

log = logging.getLogger(__name__)


class RedisLost(StopRequested):
    """Redis went away under the queue worker. A StopRequested, so that RQ's work loop ends
    quietly (it would log "found an unhandled exception, quitting" for anything else) and
    ``StartQueueWorker.work`` waits for Redis and starts the loop again."""


def run_start(
    app_name: str,
    environments: list[str],
    *,
    generation: int,
    request_id: str,
    attempt: int = 0,
    incarnation: str = "",
) -> str:
    """The RQ job. Runs in the queue worker process itself (``StartQueueWorker``), which keeps
    its database connection between jobs; one broken or too old is replaced first. If the job
    fails unexpectedly its pending entry stays, so the recovery check marks what it left
    ``queued``/``starting`` as interrupted."""
    close_old_connections()
    try:
        job = StartJob(
            app_name,
            environments,
            generation=generation,
            request_id=request_id,
            starter=remote.start_on_environment,
            ingest=ingest.ingest,
            lock=StartLock(app_name),
            incarnation=incarnation,
        )
        outcome = job.run(attempt)
        if outcome != "requeued":
            forget_pending(app_name, pending_value(generation, request_id))
        return outcome
    finally:
        close_old_connections()


class StartQueueWorker(rq.SimpleWorker):
    """The RQ worker for ``app_starts``: runs each job itself, and the recovery check when it
    starts and every few seconds while idle, so a start interrupted by a dead worker becomes
    visible.

    No work-horse is forked per job: a start job mostly waits for a worker's acknowledgement,
    and the fork plus fresh database and Redis connections in every horse were half of the
    queue worker's CPU (docs/benchmarks.md, "Start queue"). A job that dies takes its queue
    worker with it, which the recovery check handles as it handles a killed worker."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Before RQ's __init__, which already talks to Redis (_set_ip_address).
        self._outage = Outage("start queue worker", log)
        self._redis_lost: Exception | None = None
        super().__init__(*args, **kwargs)
        self.queue_class = _watched_queue_class(self, self.queue_class)

    def _set_ip_address(self, connection: redis.Redis) -> None:
        # RQ names its connection while the worker is built, before any signal handler: with
        # Redis down that raised and the command exited at once. Wait for it instead (SIGTERM
        # still ends the process: Python's default handler is in place until work()).
        try:
            super()._set_ip_address(connection)
        except redis.RedisError as error:
            self._outage.lost(error)
            self._outage.wait_until_back(
                lambda: super(StartQueueWorker, self)._set_ip_address(connection), lambda: False
            )

    def _lost(self, error: Exception) -> NoReturn:
        self._redis_lost = error
        self._outage.lost(error)
        raise RedisLost(str(error)) from error

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """RQ's work loop, started again whenever Redis went away under it (at start-up, while
        idle, or during a job), once Redis answers again, instead of exiting: a queue worker
        that quits on an outage needs its launcher to notice, and stopped the web server beside
        it. Ends only on a stop request (SIGTERM/SIGINT) or when RQ's own loop ends (burst,
        max jobs, an error that is not Redis')."""
        worked = False
        while True:
            self._redis_lost = None
            try:
                worked = super().work(*args, **kwargs) or worked
            except RedisLost:
                pass  # raised by bootstrap's hooks, outside RQ's loop
            except redis.RedisError as error:  # bootstrap (register_birth, subscribe)
                self._redis_lost = error
                self._outage.lost(error)
            except StopRequested:  # SIGTERM while bootstrapping
                return worked
            if self._redis_lost is None or self._stop_requested:
                return worked
            try:
                if not self._outage.wait_until_back(self._rejoin, lambda: self._stop_requested):
                    return worked
            except StopRequested:  # SIGTERM while waiting (RQ's handler raises it when not busy)
                return worked

    def _rejoin(self) -> None:
        """Once Redis answers: mark this worker's previous life dead (its teardown could not,
        Redis being gone; register_birth refuses a name still alive) so the loop can start again."""
        self.connection.ping()
        self.register_death()

    def bootstrap(self, *args, **kwargs) -> None:
        super().bootstrap(*args, **kwargs)
        self._next_recovery = 0.0
        self._outage.restored()

    # Every step of RQ's loop that talks to Redis: an outage ends the loop quietly (RedisLost).
    def check_for_suspension(self, burst: bool) -> None:
        try:
            super().check_for_suspension(burst)
        except redis.RedisError as error:
            self._lost(error)

    def run_maintenance_tasks(self) -> None:
        try:
            super().run_maintenance_tasks()
        except redis.RedisError as error:
            self._lost(error)

    def set_state(self, state: str, pipeline=None) -> None:
        try:
            super().set_state(state, pipeline)
        except redis.RedisError as error:
            self._lost(error)

    def execute_job(self, job: rq.job.Job, queue: rq.Queue) -> None:
        # A job's own Redis errors fail the job (RQ records it); recording the failure needs
        # Redis too, and that error lands here. The job's pending entry stays, so the recovery
        # check marks what it left queued/starting as interrupted.
        try:
            super().execute_job(job, queue)
        except redis.RedisError as error:
            self._lost(error)

    def teardown(self) -> None:
        # With Redis gone register_death fails; unsubscribe anyway, so the next life's
        # subscription does not run beside a stale pubsub thread.
        try:
            super().teardown()
        except redis.RedisError as error:
            self._redis_lost = error
            self._outage.lost(error)
            self.unsubscribe()

    def _pubsub_exception_handler(self, exc: Exception, pubsub: Any, pubsub_thread: Any) -> None:
        # RQ logs an error every 2 s while its control channel cannot reconnect; the outage is
        # logged once instead, and the thread keeps retrying (redis-py resubscribes).
        if isinstance(exc, redis.ConnectionError):
            self._outage.lost(exc)
            time.sleep(2.0)
            return
        super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)

    @property
    def dequeue_timeout(self) -> int:
        # Wake up regularly while idle so the recovery check runs.
        return max(1, int(settings.APP_CONFIG.start_lock_ttl))

    def heartbeat(self, timeout: int | None = None, pipeline=None):
        try:
            result = super().heartbeat(timeout, pipeline)
            # Without a pipeline, the heartbeat comes from the idle loop or right after a job.
            if pipeline is None and time.monotonic() >= self._next_recovery:
                self._next_recovery = time.monotonic() + settings.APP_CONFIG.start_lock_ttl / 2
                try:
                    recover_throttled()
                    backup_schedule.run_throttled()
                finally:
                    close_old_connections()
        except redis.RedisError as error:
            self._lost(error)
        self._outage.restored()  # e.g. after the pubsub thread saw an outage this loop outlived
        return result


def _watched_queue_class(worker: StartQueueWorker, base: type[rq.Queue]) -> type[rq.Queue]:
    """The worker's queue class, whose blocking dequeue reports an outage to ``worker`` rather
    than into RQ's own retry (which logs an error every try)."""

    class WatchedQueue(base):  # type: ignore[valid-type, misc]
        @classmethod
        def dequeue_any(cls, *args: Any, **kwargs: Any):
            try:
                return super().dequeue_any(*args, **kwargs)
            except redis.RedisError as error:
                worker._lost(error)

    WatchedQueue.__name__ = base.__name__
    return WatchedQueue
