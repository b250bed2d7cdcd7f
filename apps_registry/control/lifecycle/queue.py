"""Tracked jobs on the queue: enqueued on the start queue's own RQ queue (``app_starts``, so
the queue workers that run starts run them too, with no new process to deploy), and run there
under a per-job Redis lock whose expiry tells recovery that the worker running it died.

A move waits for its app's start in its own process (the start queue's ``StartJob``, run
inline), so a single queue worker can run a move: it never waits for another queue job."""

from __future__ import annotations

import logging

from django.db import close_old_connections

from apps_registry.control import keys
from apps_registry.control.start_queue.enqueue import get_queue
from apps_registry.control.start_queue.lock import StartLock
from apps_registry.models import Job, JobKind

log = logging.getLogger(__name__)

JOB_PREFIX = "job-"
JOB_FUNCTION = "apps_registry.control.lifecycle.queue.run_job"
# A drain runs many moves; a move one start, its probes and its drain wait.
_TIMEOUTS = {JobKind.MOVE: 3600, JobKind.DRAIN: 24 * 3600}


def rq_job_id(job_id: str, attempt: int) -> str:
    return f"{JOB_PREFIX}{job_id}-{attempt}"


def job_of_rq_id(rq_id: str) -> str | None:
    if not rq_id.startswith(JOB_PREFIX):
        return None
    return rq_id[len(JOB_PREFIX) :].rsplit("-", 1)[0]


def enqueue_job(job: Job, attempt: int = 0) -> None:
    """Put the job on the queue (django-rq does it once the surrounding transaction commits)."""
    get_queue().enqueue(
        JOB_FUNCTION,
        str(job.pk),
        job_id=rq_job_id(str(job.pk), attempt),
        job_timeout=_TIMEOUTS.get(job.kind, 3600),
        result_ttl=600,
        failure_ttl=7 * 24 * 3600,
        description=f"{job.kind} {job.app_name or (job.environment.name if job.environment_id else '')}",
    )


class JobLock(StartLock):
    """The start lock's mechanism (owner token, renewed by a thread, compare-and-delete) on the
    job's own key ``P:lock:job:<id>``."""

    def __init__(self, job_id: str):
        super().__init__(job_id)
        self.key = keys.job_lock(job_id)


def run_job(job_id: str) -> str:
    """The RQ job: run (or resume) the tracked job unless another worker runs it already."""
    from apps_registry.control.lifecycle.drain import DrainRun
    from apps_registry.control.lifecycle.move import MoveRun
    from apps_registry.registry import jobs

    close_old_connections()
    lock = JobLock(job_id)
    if not lock.acquire():
        return "busy"  # another queue worker runs it (a duplicate enqueue): nothing to do
    try:
        try:
            job = jobs.start_job(job_id, runner=_current_rq_id())
        except (jobs.JobDone, Job.DoesNotExist):
            return "done"
        runner = MoveRun if job.kind == JobKind.MOVE else DrainRun
        return runner(job).run()
    finally:
        lock.release()
        close_old_connections()


def _current_rq_id() -> str:
    from rq import get_current_job

    current = get_current_job()
    return current.id if current is not None else ""
