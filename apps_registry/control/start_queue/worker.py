"""The queue worker's side: the RQ job function and the worker class that runs it."""

from __future__ import annotations

import time

import rq
from django.conf import settings
from django.db import close_old_connections

from apps_registry.control import ingest
from apps_registry.control.runners import remote
from apps_registry.control.start_queue.enqueue import forget_pending, pending_value
from apps_registry.control.start_queue.job import StartJob
from apps_registry.control.start_queue.lock import StartLock
from apps_registry.control.start_queue.recovery import recover_throttled


def run_start(app_name: str, environments: list[str], *, generation: int, request_id: str, attempt: int = 0) -> str:
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

    def bootstrap(self, *args, **kwargs) -> None:
        super().bootstrap(*args, **kwargs)
        self._next_recovery = 0.0

    @property
    def dequeue_timeout(self) -> int:
        # Wake up regularly while idle so the recovery check runs.
        return max(1, int(settings.APP_CONFIG.start_lock_ttl))

    def heartbeat(self, timeout: int | None = None, pipeline=None):
        result = super().heartbeat(timeout, pipeline)
        # Without a pipeline, the heartbeat comes from the idle loop or right after a job.
        if pipeline is None and time.monotonic() >= self._next_recovery:
            self._next_recovery = time.monotonic() + settings.APP_CONFIG.start_lock_ttl / 2
            try:
                recover_throttled()
            finally:
                close_old_connections()
        return result
