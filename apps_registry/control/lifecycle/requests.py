"""What the admin and the API ask for: a move, a drain, an undrain, a cancel. Each is
pre-checked here (a refusal changes nothing), recorded through ``registry`` (audited) and,
for jobs, enqueued once the transaction commits."""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from apps_registry.control.lifecycle import checks
from apps_registry.control.lifecycle.drain import STEPS as DRAIN_STEPS
from apps_registry.control.lifecycle.drain import move_job_for
from apps_registry.control.lifecycle.queue import enqueue_job
from apps_registry.models import JOB_DONE, Application, Environment, Job, JobKind
from apps_registry.registry import jobs, moves

MoveRefused = checks.MoveRefused


def active_move(app: Application) -> Job | None:
    """A move of the app not finished yet (its own, or a drain's)."""
    return Job.objects.filter(application=app, kind=JobKind.MOVE).exclude(status__in=JOB_DONE).first()


def request_move(
    app: Application, to: Sequence[str], user: AbstractBaseUser | None = None, *, via: str = "admin"
) -> Job:
    """A move of ``app`` onto exactly ``to``, queued. ``MoveRefused`` says why not."""
    with transaction.atomic():
        # The app's row lock, as every request on it takes: two moves asked at once are one.
        Application.objects.select_for_update().filter(pk=app.pk).first()
        busy = active_move(app)
        if busy is not None:
            raise MoveRefused(f"{app.name} is being moved already (job {busy.pk})")
        job = move_job_for(app, list(to), user=user, via=via)
        enqueue_job(job)
    return job


def request_drain(env: Environment, user: AbstractBaseUser | None = None, *, via: str = "admin") -> Job:
    """Mark ``env`` draining (no new placements) and queue the job that moves its apps away."""
    with transaction.atomic():
        busy = Job.objects.filter(environment=env, kind=JobKind.DRAIN).exclude(status__in=JOB_DONE).first()
        if busy is not None:
            return busy
        moves.set_environment_draining(env, True, user, via=via)
        job = jobs.create_job(JobKind.DRAIN, DRAIN_STEPS, environment=env, user=user, via=via)
        enqueue_job(job)
    return job


def request_undrain(env: Environment, user: AbstractBaseUser | None = None, *, via: str = "admin") -> bool:
    """``env`` takes new placements again; a drain under way is cancelled (the moves it has
    not switched yet are rolled back). Returns whether it was draining."""
    with transaction.atomic():
        for job in Job.objects.filter(environment=env, kind=JobKind.DRAIN).exclude(status__in=JOB_DONE):
            cancel(job, user, via=via)
        return moves.set_environment_draining(env, False, user, via=via)


def cancel(job: Job, user: AbstractBaseUser | None = None, *, via: str = "admin") -> bool:
    """Ask a job (and a drain's moves) to stop: a move cancels up to its switch, not after."""
    with transaction.atomic():
        asked = jobs.request_cancel(job.pk, user=user, via=via)
        for child in Job.objects.filter(parent=job).exclude(status__in=JOB_DONE):
            jobs.request_cancel(child.pk, user=user, via=via)
    return asked
