"""Tracked jobs (move, drain, backup, …): created with their step names, then advanced step by
step by the process that runs them, finished, failed or cancelled. The only way a ``Job`` or
``JobStep`` changes.

A job may be touched by two processes at once — the queue worker running it, an operator
cancelling it, the recovery of a worker that vanished — so every transition locks the job's
row (``select_for_update``) and checks the state it expects: a job that is already done is
never reopened, a step of a cancelled job is never started."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from apps_registry.models import (
    JOB_DONE,
    Application,
    Environment,
    Job,
    JobStatus,
    JobStep,
    StepStatus,
)
from apps_registry.registry.requests import acting_user, audit

MAX_ERROR = 2000


class JobDone(Exception):
    """The job is finished (succeeded, failed or cancelled): nothing more may change it."""


def _clip(error: str) -> str:
    return error[:MAX_ERROR]


def create_job(
    kind: str,
    steps: Sequence[str],
    *,
    application: Application | None = None,
    environment: Environment | None = None,
    parent: Job | None = None,
    params: dict[str, Any] | None = None,
    user: AbstractBaseUser | None = None,
    via: str = "admin",
) -> Job:
    """A queued job with its steps (all queued, in the order given). Audited as ``<kind>_requested``."""
    if not steps or len(set(steps)) != len(steps):
        raise ValueError("a job needs at least one step, each named once")
    with transaction.atomic():
        job = Job.objects.create(
            kind=kind,
            application=application,
            app_name=application.name if application is not None else "",
            environment=environment,
            parent=parent,
            params=params or {},
            requested_by=acting_user(user),
        )
        JobStep.objects.bulk_create(JobStep(job=job, position=i, name=name) for i, name in enumerate(steps))
        audit(
            f"{kind}_requested",
            user=user,
            app_name=job.app_name,
            environments=_environments_of(job),
            request_id=str(job.pk),
            via=via,
        )
    return job


def _environments_of(job: Job) -> list[str]:
    names = list(job.params.get("to", [])) + ([job.params["from"]] if job.params.get("from") else [])
    if job.environment_id is not None:
        names.append(job.environment.name)
    return sorted(set(names))


def _locked(job_id: Any) -> Job:
    return Job.objects.select_for_update().get(pk=job_id)


def start_job(job_id: Any, *, runner: str = "") -> Job:
    """The queue worker picked the job up (first run, or a resume after recovery): ``running``,
    with who runs it. Raises ``JobDone`` if it finished (or was cancelled) meanwhile."""
    with transaction.atomic():
        job = _locked(job_id)
        if job.status in JOB_DONE:
            raise JobDone(str(job.pk))
        now = timezone.now()
        job.status = JobStatus.RUNNING
        job.started_at = job.started_at or now
        job.heartbeat_at = now
        job.runner = runner[:64]
        job.attempts += 1
        job.save(update_fields=["status", "started_at", "heartbeat_at", "runner", "attempts"])
    return job


def start_step(job_id: Any, name: str) -> JobStep:
    """The step begins (again, on a resume). Raises ``JobDone`` if the job finished meanwhile."""
    with transaction.atomic():
        job = _locked(job_id)
        if job.status in JOB_DONE:
            raise JobDone(str(job.pk))
        step = JobStep.objects.get(job=job, name=name)
        step.status = StepStatus.RUNNING
        step.started_at = timezone.now()
        step.finished_at = None
        step.error = ""
        step.save(update_fields=["status", "started_at", "finished_at", "error"])
        Job.objects.filter(pk=job.pk).update(heartbeat_at=step.started_at)
    return step


def finish_step(job_id: Any, name: str, *, status: str = StepStatus.SUCCEEDED, error: str = "") -> None:
    """The step ended: ``succeeded`` (default), ``skipped`` or ``failed`` with its error."""
    if status not in (StepStatus.SUCCEEDED, StepStatus.SKIPPED, StepStatus.FAILED):
        raise ValueError(f"a step cannot finish as {status!r}")
    with transaction.atomic():
        job = _locked(job_id)
        now = timezone.now()
        JobStep.objects.filter(job=job, name=name).update(status=status, finished_at=now, error=_clip(error))
        Job.objects.filter(pk=job.pk).update(heartbeat_at=now)


def fail_step(job_id: Any, name: str, error: str) -> None:
    finish_step(job_id, name, status=StepStatus.FAILED, error=error)


def heartbeat(job_id: Any) -> None:
    """The runner is alive (long steps call it while they wait)."""
    Job.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(heartbeat_at=timezone.now())


def _close(job: Job, status: str, error: str) -> None:
    now = timezone.now()
    job.status = status
    job.finished_at = now
    job.error = _clip(error)
    job.save(update_fields=["status", "finished_at", "error"])
    # Steps that never ran are left no ambiguity: cancelled (the job stopped before them).
    JobStep.objects.filter(job=job, status__in=(StepStatus.QUEUED, StepStatus.RUNNING)).update(
        status=StepStatus.CANCELLED, finished_at=now
    )


def finish_job(job_id: Any, *, error: str = "", via: str = "queue") -> Job:
    """The job ended: ``succeeded``, or ``failed`` with ``error``. Audited as ``<kind>_succeeded``
    / ``<kind>_failed``. A job already done is left as it is (returned unchanged)."""
    with transaction.atomic():
        job = _locked(job_id)
        if job.status in JOB_DONE:
            return job
        _close(job, JobStatus.FAILED if error else JobStatus.SUCCEEDED, error)
        audit(
            f"{job.kind}_{job.status}",
            app_name=job.app_name,
            environments=_environments_of(job),
            result="error" if error else "ok",
            error=job.error,
            request_id=str(job.pk),
            via=via,
        )
    return job


def request_cancel(job_id: Any, *, user: AbstractBaseUser | None = None, via: str = "admin") -> bool:
    """An operator asks to cancel the job. A queued job is cancelled at once; a running one is
    flagged, and its runner cancels it at its next step boundary if it still can (a move, up to
    its switch). Returns False if the job was already done. Audited."""
    with transaction.atomic():
        job = _locked(job_id)
        if job.status in JOB_DONE:
            return False
        Job.objects.filter(pk=job.pk).update(cancel_requested=True)
        if job.status == JobStatus.QUEUED:
            _close(job, JobStatus.CANCELLED, "cancelled before it started")
        audit(
            f"{job.kind}_cancel_requested",
            user=user,
            app_name=job.app_name,
            environments=_environments_of(job),
            request_id=str(job.pk),
            via=via,
        )
    return True


def cancel_requested(job_id: Any) -> bool:
    return Job.objects.filter(pk=job_id, cancel_requested=True).exists()


def cancel_job(job_id: Any, *, reason: str = "cancelled", via: str = "queue") -> Job:
    """The runner stops the job as cancelled (what it had done is undone by then). Audited."""
    with transaction.atomic():
        job = _locked(job_id)
        if job.status in JOB_DONE:
            return job
        _close(job, JobStatus.CANCELLED, reason)
        audit(
            f"{job.kind}_cancelled",
            app_name=job.app_name,
            environments=_environments_of(job),
            error=job.error,
            request_id=str(job.pk),
            via=via,
        )
    return job
