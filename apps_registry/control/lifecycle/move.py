"""One move job: an app from its ``sources`` to its ``targets`` with no failed request.

Steps, each recorded in the job (``registry.jobs``), each safe to run again when a resumed job
finds it ``running`` (its queue worker died in it):

1. ``pre-checks`` — every target still online, enabled, approved, not draining, and reaching
   the app's database (its agent answers the command ``check``, which changes nothing);
2. ``start on target`` — the targets become placements that do not serve yet, and the app is
   started there by the start queue's own ``StartJob`` (the app's start lock, one environment
   after another), run in this job;
3. ``wait until it serves`` — each target reports ``running`` and answers the app's root
   (directly, not through the proxy) three times in a row with no 5xx;
4. ``switch route`` — one UPDATE: targets serve, sources do not (``registry.moves``);
5. ``drain source`` — the sources keep serving ``PROXY_ROUTE_CACHE_SECONDS`` +
   ``APP_MOVE_DRAIN_SECONDS``: requests in flight finish there, and every supervisor process's
   route cache has expired before anything stops;
6. ``unload source`` — a remove on the sources; they stop being placements.

Cancellation is honoured at step boundaries up to the switch (the targets are removed again);
after the switch the job only goes forward. A failure before the switch rolls back the same
way, so the app serves from its sources throughout; after it, from its targets."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

import urllib3
from django.conf import settings

from apps_registry.control import channel, ingest
from apps_registry.control.lifecycle.checks import environment_problems
from apps_registry.control.runners import remote
from apps_registry.control.start_queue.job import StartJob
from apps_registry.control.start_queue.lock import StartLock
from apps_registry.models import AppEnvironment, Application, AppStatus, Environment, Job, StepStatus
from apps_registry.registry import jobs, moves

log = logging.getLogger(__name__)

PRE_CHECKS = "pre-checks"
START = "start on target"
WAIT = "wait until it serves"
SWITCH = "switch route"
DRAIN = "drain source"
UNLOAD = "unload source"
STEPS = (PRE_CHECKS, START, WAIT, SWITCH, DRAIN, UNLOAD)
# Consecutive answers without a 5xx that count as "serves there".
PROBES = 3
# Tests only: a comma-separated list of step names; the job's n-th run SIGKILLs its own queue
# worker when it begins the n-th of them, so that a test kills a real queue worker at each
# step in turn (each resumed run gets one step further).
KILL_AT_ENV = "APP_TEST_MOVE_KILL_AT"


class StepFailed(Exception):
    """A step cannot complete; the message says why (shown on the step and the job)."""


def _kill_hook(job: Job, step: str) -> None:
    plan = [name.strip() for name in os.environ.get(KILL_AT_ENV, "").split(",") if name.strip()]
    if 1 <= job.attempts <= len(plan) and plan[job.attempts - 1] == step:
        log.warning("test hook: killing this queue worker at step %r of job %s", step, job.pk)
        os.kill(os.getpid(), signal.SIGKILL)


class MoveRun:
    """Runs (or resumes) one move job that ``jobs.start_job`` marked running."""

    def __init__(self, job: Job):
        self.job = job
        self.sources: list[str] = list(job.params.get("sources", []))
        self.targets: list[str] = list(job.params.get("targets", []))

    @property
    def app(self) -> Application:
        app = Application.objects.filter(pk=self.job.application_id).first() if self.job.application_id else None
        if app is None:
            raise StepFailed("the application was deleted")
        return app

    def run(self) -> str:
        """The job's outcome: ``succeeded``, ``failed`` or ``cancelled``."""
        job = self.job
        statuses = dict(job.steps.values_list("name", "status"))
        switched = statuses.get(SWITCH) == StepStatus.SUCCEEDED
        handlers: dict[str, Callable[[], str | None]] = {
            PRE_CHECKS: self.pre_checks,
            START: self.start_on_targets,
            WAIT: self.wait_until_serving,
            SWITCH: self.switch,
            DRAIN: self.drain_sources,
            UNLOAD: self.unload_sources,
        }
        for name in STEPS:
            if statuses.get(name) in (StepStatus.SUCCEEDED, StepStatus.SKIPPED):
                continue
            if not switched and jobs.cancel_requested(job.pk):
                self.roll_back("cancelled by an operator before the switch")
                jobs.cancel_job(job.pk, reason="cancelled before the switch; the app stayed on its sources")
                return "cancelled"
            try:
                jobs.start_step(job.pk, name)
            except jobs.JobDone:
                return "done"
            _kill_hook(job, name)
            try:
                outcome = handlers[name]()
            except Exception as error:  # every failure ends the job, with its reason shown
                if not isinstance(error, (StepFailed, moves.SwitchRefused)):
                    log.exception("move job %s failed at %s", job.pk, name)
                jobs.fail_step(job.pk, name, str(error))
                if not switched:
                    self.roll_back(f"{name}: {error}")
                jobs.finish_job(job.pk, error=f"{name}: {error}")
                return "failed"
            jobs.finish_step(job.pk, name, status=StepStatus.SKIPPED if outcome == "skipped" else StepStatus.SUCCEEDED)
            if name == SWITCH:
                switched = True
        jobs.finish_job(job.pk)
        return "succeeded"

    def roll_back(self, reason: str) -> None:
        app = Application.objects.filter(pk=self.job.application_id).first() if self.job.application_id else None
        if app is not None:
            moves.roll_back_move(app, self.targets, self.sources, job_id=str(self.job.pk), reason=reason)

    # --- steps ------------------------------------------------------------------------------

    def pre_checks(self) -> None:
        self.app  # noqa: B018  (still there)
        pending = list(
            Environment.objects.filter(name__in=self.targets).exclude(
                placements__application_id=self.job.application_id, placements__serving=True
            )
        )
        problems = environment_problems(pending)
        if problems:
            raise StepFailed("; ".join(problems.values()))
        app = self.app
        if app.generation == 0 and not moves.app_runs(app):
            return  # never started: it has no database anywhere yet, nothing to reach
        unreachable = [problem for env in pending if (problem := self._reaches_database(app, env.name))]
        if unreachable:
            raise StepFailed("; ".join(unreachable))

    def _reaches_database(self, app: Application, env: str) -> str:
        """Ask ``env``'s agent whether it reaches the app's database (command ``check``, which
        changes nothing there); the problem, or "" if it does."""
        timeout = min(30.0, settings.APP_CONFIG.start_timeout)
        command_id = channel.send_command(
            env, "check", app.name, generation=app.generation, request_id="", incarnation=str(app.incarnation)
        )
        ack = channel.wait_for_ack(command_id, timeout, env=env)
        jobs.heartbeat(self.job.pk)
        if ack is None:
            return f"{env} did not answer whether it reaches {app.name}'s database within {timeout:g} s"
        if ack.get("result") == "ok":
            return ""
        return f"{env} cannot reach {app.name}'s database: {ack.get('error') or ack.get('result')}"

    def start_on_targets(self) -> str | None:
        app = self.app
        if not self.targets:
            return "skipped"
        request_id, generation = moves.place_move_targets(app, self.targets, job_id=str(self.job.pk))
        if not request_id:
            # Nothing to start: the app does not run (the move only re-places it), or it is
            # up or starting there already (a resumed move, or a start the queue resumed).
            return None if moves.app_runs(app) else "skipped"
        outcome = StartJob(
            app.name,
            self.targets,
            generation=generation,
            request_id=request_id,
            starter=remote.start_on_environment,
            ingest=ingest.ingest,
            lock=StartLock(app.name),
            incarnation=str(app.incarnation),
        ).run(requeue=False)
        if outcome != "ok":
            errors = dict(
                AppEnvironment.objects.filter(application=app, environment__name__in=self.targets)
                .exclude(error="")
                .values_list("environment__name", "error")
            )
            detail = "; ".join(f"{env}: {error}" for env, error in sorted(errors.items()))
            raise StepFailed(f"the start on the targets ended {outcome}" + (f" ({detail})" if detail else ""))
        return None

    def wait_until_serving(self) -> str | None:
        app = self.app
        if not self.targets or not moves.app_runs(app):
            return "skipped"
        timeout = settings.APP_CONFIG.start_timeout
        deadline = time.monotonic() + timeout
        envs = {e.name: e for e in Environment.objects.filter(name__in=self.targets)}
        pool = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2.0, read=5.0), retries=False)
        try:
            for name in self.targets:
                self._wait_one(app, envs[name], pool, deadline, timeout)
        finally:
            pool.clear()
        return None

    def _wait_one(
        self, app: Application, env: Environment, pool: urllib3.PoolManager, deadline: float, timeout: float
    ) -> None:
        url = env.target_url.rstrip("/") + f"/apps/{app.name}/"
        problem = settings.APP_CONFIG.environment_allowed_networks.url_problem(env.target_url.rstrip("/"))
        if problem:
            raise StepFailed(f"{env.name}: its URL {problem}")
        good = 0
        last = "no answer yet"
        while good < PROBES:
            if time.monotonic() >= deadline:
                raise StepFailed(f"{app.name} did not serve on {env.name} within {timeout:g} s ({last})")
            ingest.ingest()
            status = (
                AppEnvironment.objects.filter(application=app, environment=env).values_list("status", flat=True).first()
            )
            if status is None:
                raise StepFailed(f"{app.name} is no longer placed on {env.name}")
            if status == AppStatus.ERROR:
                raise StepFailed(f"{app.name} failed on {env.name}")
            if status != AppStatus.RUNNING:
                good, last = 0, f"status {status}"
            else:
                try:
                    answer = pool.request("GET", url, redirect=False, headers={"Accept": "text/html"})
                    good, last = (good + 1, "") if answer.status < 500 else (0, f"HTTP {answer.status}")
                except urllib3.exceptions.HTTPError as error:
                    good, last = 0, str(error)[:200]
            jobs.heartbeat(self.job.pk)
            if good < PROBES:
                time.sleep(0.05)

    def switch(self) -> None:
        moves.switch_route(self.app, self.sources, self.targets, job_id=str(self.job.pk))

    def drain_sources(self) -> str | None:
        if not self.sources:
            return "skipped"
        config = settings.APP_CONFIG
        until = time.monotonic() + config.proxy_route_cache_seconds + config.move_drain_seconds
        while (left := until - time.monotonic()) > 0:
            jobs.heartbeat(self.job.pk)
            time.sleep(min(left, 1.0))
        return None

    def unload_sources(self) -> str | None:
        if not self.sources:
            return "skipped"
        moves.unload_sources(self.app, self.sources, job_id=str(self.job.pk))
        return None
