"""One drain job: every app on a draining environment moves elsewhere (each a move job of
its own, the drain's child, ``APP_DRAIN_CONCURRENCY`` at a time as threads of this job), then
the environment must be empty. Resumed after a dead queue worker: children already done stay
done, the others run (again) from their last finished step."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import connection

from apps_registry.control.lifecycle import checks
from apps_registry.control.lifecycle.move import MoveRun, StepFailed
from apps_registry.models import AppEnvironment, Application, Environment, Job, JobKind, JobStatus, StepStatus
from apps_registry.registry import jobs

log = logging.getLogger(__name__)

PRE_CHECKS = "pre-checks"
MOVE_APPS = "move apps"
CHECK_EMPTY = "check empty"
STEPS = (PRE_CHECKS, MOVE_APPS, CHECK_EMPTY)


def move_job_for(app: Application, to: list[str], *, parent: Job | None = None, user=None, via: str = "admin") -> Job:
    """A queued move job of ``app`` to exactly ``to`` (pre-checked: ``checks.MoveRefused``)."""
    from apps_registry.control.lifecycle.move import STEPS as MOVE_STEPS

    sources, targets = checks.move_plan(app, to)
    return jobs.create_job(
        JobKind.MOVE,
        MOVE_STEPS,
        application=app,
        parent=parent,
        params={"to": sorted(to), "sources": sources, "targets": targets},
        user=user,
        via=via,
    )


class DrainRun:
    def __init__(self, job: Job):
        self.job = job

    def run(self) -> str:
        job = self.job
        statuses = dict(job.steps.values_list("name", "status"))
        for name, handler in ((PRE_CHECKS, self.pre_checks), (MOVE_APPS, self.move_apps), (CHECK_EMPTY, self.empty)):
            if statuses.get(name) in (StepStatus.SUCCEEDED, StepStatus.SKIPPED):
                continue
            if jobs.cancel_requested(job.pk):
                jobs.cancel_job(job.pk, reason="cancelled; the environment stays draining (undrain to reopen it)")
                return "cancelled"
            try:
                jobs.start_step(job.pk, name)
            except jobs.JobDone:
                return "done"
            try:
                handler()
            except Exception as error:
                if not isinstance(error, StepFailed):
                    log.exception("drain job %s failed at %s", job.pk, name)
                jobs.fail_step(job.pk, name, str(error))
                jobs.finish_job(job.pk, error=f"{name}: {error}")
                return "failed"
            jobs.finish_step(job.pk, name)
        jobs.finish_job(job.pk)
        return "succeeded"

    @property
    def environment(self) -> Environment:
        env = Environment.objects.filter(pk=self.job.environment_id).first() if self.job.environment_id else None
        if env is None:
            raise StepFailed("the environment was forgotten")
        return env

    def pre_checks(self) -> None:
        if not self.environment.draining:
            raise StepFailed(f"{self.environment.name} is not draining any more (undrained)")

    def _plan(self, env: Environment) -> list[Job]:
        """The child move of every app still on ``env``: existing ones (a resumed drain) that
        did not fail, else new ones, spreading apps that must go elsewhere over the usable
        environments with the fewest apps."""
        children = {c.app_name: c for c in Job.objects.filter(parent=self.job).order_by("created_at")}
        planned: list[Job] = []
        failures: list[str] = []
        for app in Application.objects.filter(placements__environment=env).order_by("name"):
            child = children.get(app.name)
            if child is not None and child.status in (JobStatus.QUEUED, JobStatus.RUNNING):
                planned.append(child)
                continue
            to = checks.drain_target(app, env)
            if to is None:
                failures.append(f"{app.name}: no other environment can take it")
                continue
            try:
                planned.append(move_job_for(app, to, parent=self.job, via="queue"))
            except checks.MoveRefused as refusal:
                failures.append(f"{app.name}: {refusal}")
        if failures:
            raise StepFailed("; ".join(failures))
        return planned

    def move_apps(self) -> None:
        env = self.environment
        children = self._plan(env)
        if not children:
            return
        with ThreadPoolExecutor(max_workers=settings.APP_CONFIG.drain_concurrency, thread_name_prefix="drain") as pool:
            outcomes = list(pool.map(_run_child, [str(c.pk) for c in children]))
        failed = [f"{c.app_name}: {o}" for c, o in zip(children, outcomes, strict=True) if o != "succeeded"]
        if failed:
            raise StepFailed("some moves did not succeed: " + "; ".join(failed))

    def empty(self) -> None:
        env = self.environment
        left = sorted(AppEnvironment.objects.filter(environment=env).values_list("application__name", flat=True))
        if left:
            raise StepFailed(f"{env.name} still has {', '.join(left)}")


def _run_child(job_id: str) -> str:
    """One child move in a thread of the drain (its own database connection, closed after)."""
    try:
        if jobs.cancel_requested(job_id):
            jobs.cancel_job(job_id, reason="the drain was cancelled")
            return "cancelled"
        try:
            job = jobs.start_job(job_id, runner="drain")
        except jobs.JobDone:
            return Job.objects.get(pk=job_id).status
        return MoveRun(job).run()
    except Exception as error:
        log.exception("move job %s failed", job_id)
        return f"error: {error}"
    finally:
        connection.close()
