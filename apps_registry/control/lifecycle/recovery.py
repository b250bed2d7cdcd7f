"""Tracked jobs whose queue worker died (SIGKILL, a lost machine) or that never reached the
queue: enqueued again, to resume from their last finished step (``MoveRun``/``DrainRun`` skip
the steps done and run the interrupted one again). A job is orphaned when it is ``running``,
its lock ``P:lock:job:<id>`` is gone (its worker renewed it every third of
``APP_START_LOCK_TTL``) and it has not said it is alive for that long. After ``MAX_ATTEMPTS``
runs it is not resumed again: a move that had not switched is rolled back (the app stays on
its sources), and the job fails. A drain's moves are resumed by the drain itself.

Run with the start queue's recovery (``start_queue.recovery.recover_throttled``): when a queue
worker starts and every few seconds while it idles."""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from apps_registry.control import keys, redis_client
from apps_registry.control.lifecycle.queue import enqueue_job, job_of_rq_id
from apps_registry.control.start_queue.enqueue import get_queue
from apps_registry.models import Job, JobKind, JobStatus, StepStatus
from apps_registry.registry import jobs

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5


def recover_jobs(now: dt.datetime | None = None) -> dict[str, list[str]]:
    """``{"resumed": [job ids], "given_up": [job ids]}``."""
    ttl = settings.APP_CONFIG.start_lock_ttl
    now = now or timezone.now()
    cutoff = now - dt.timedelta(seconds=ttl)
    result: dict[str, list[str]] = {"resumed": [], "given_up": []}
    suspects = list(
        # Moves and drains only: backup, restore, clone and drill jobs have their own recovery
        # (control.backups.schedule.recover_interrupted), which ends them rather than resuming.
        Job.objects.filter(parent__isnull=True, kind__in=(JobKind.MOVE, JobKind.DRAIN))
        .filter(
            Q(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff)
            | Q(status=JobStatus.QUEUED, created_at__lt=cutoff)
            & (Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=cutoff))
        )
        .order_by("created_at")[:100]
    )
    if not suspects:
        return result
    client = redis_client.commands()
    with client.pipeline(transaction=False) as pipe:
        for job in suspects:
            pipe.exists(keys.job_lock(str(job.pk)))
        held = pipe.execute()
    waiting = {job_of_rq_id(i) for i in get_queue().get_job_ids()}
    for job, locked in zip(suspects, held, strict=True):
        if locked or str(job.pk) in waiting:
            continue
        if job.status == JobStatus.RUNNING and job.attempts >= MAX_ATTEMPTS:
            _give_up(job)
            result["given_up"].append(str(job.pk))
            continue
        if not jobs.note_resumed(job.pk, before=cutoff):
            continue  # another process resumed it just now
        log.warning("%s job %s lost its queue worker: enqueued again", job.kind, job.pk)
        enqueue_job(job, attempt=job.attempts)
        result["resumed"].append(str(job.pk))
    return result


def _give_up(job: Job) -> None:
    reason = f"interrupted {job.attempts} times; not resumed again"
    if job.kind == JobKind.MOVE:
        from apps_registry.control.lifecycle.move import SWITCH, MoveRun

        switched = job.steps.filter(name=SWITCH, status=StepStatus.SUCCEEDED).exists()
        if not switched:
            MoveRun(job).roll_back(reason)
            reason += "; rolled back before its switch (the app stayed on its sources)"
        else:
            reason += "; it had switched: the app serves from its targets, its sources may still need a remove"
    jobs.finish_job(job.pk, error=reason)
