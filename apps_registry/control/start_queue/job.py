"""One start request for one app, run under the app's lock by a queue worker (``worker``) or
in-process by the standalone runner. Its collaborators — how to start the app on one
environment, how to take in the workers' reports, which lock — are given to it."""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Protocol

from django.conf import settings

from apps_registry.control.start_queue.enqueue import enqueue_start
from apps_registry.models import AppEnvironment, Application, AppStatus, AuditEntry
from apps_registry.registry import actions

log = logging.getLogger(__name__)

# How long a job waits for another job's lock on the same app before requeueing itself.
LOCK_WAIT = 1.0
SETTLED = (AppStatus.RUNNING, AppStatus.ERROR, AppStatus.STOPPED)
SUPERSEDED = "superseded by a later request"
Outcome = AuditEntry.Outcome


class Undelivered(str):
    """A starter's error meaning the environment is not there to take the start: the command
    waits on its stream (or the worker reconciles to "wanted running") when it is back, so the
    request's outcome there is ``not delivered``, not a failure of the app."""


# (app, environment, *, generation, request_id, timeout) -> error message (maybe Undelivered) or None
Starter = Callable[..., str | None]


class Lock(Protocol):
    lost: object  # a threading.Event: set when the lock was lost while held

    def acquire(self, wait: float = 0.0) -> bool: ...

    def release(self) -> None: ...


def start_order(app_name: str, environments: Sequence[str]) -> list[str]:
    """The order in which one app's environments are started (one after another).

    A first start initialises the app's shared database, CPU work done by one agent process;
    if every app began with the alphabetically first environment, that agent would do all of
    it while the others wait. Rotating name order by a stable hash of the app's name (crc32:
    the same in every process, unlike ``hash()``) spreads first initialisations over the
    environments, and a retried or requeued job of the app keeps the same order."""
    names = sorted(environments)
    if len(names) < 2:
        return names
    shift = zlib.crc32(app_name.encode()) % len(names)
    return names[shift:] + names[:shift]


class StartJob:
    """One start request for one app, executed under the app's lock: ``starter`` starts it on
    one environment (a command to a worker, or the runtime in this process), ``ingest`` takes in
    the workers' reports before the job reads a status, ``lock`` is the app's start lock."""

    def __init__(
        self,
        app_name: str,
        environments: Sequence[str],
        *,
        generation: int,
        request_id: str,
        starter: Starter,
        ingest: Callable[[], object],
        lock: Lock,
        starter_settles: bool = False,
        incarnation: str = "",
    ):
        self.app_name = app_name
        self.environments = start_order(app_name, environments)
        self.generation = generation
        # Which app of this name the start is for: generations start again for a name deleted
        # and created again, so the generation alone would let a deleted app's job start it.
        self.incarnation = incarnation
        self.request_id = request_id
        self.starter = starter
        self.ingest = ingest
        self.lock = lock
        # True when the starter records the environment's final status itself and returns
        # only once the start is over (standalone: the runtime runs in this very thread).
        # Its verdict is then the outcome: polling the placement afterwards can only see
        # what later requests did to it (a stop and a start make it ``queued``), and the
        # stop that would settle it waits for the lock this job holds.
        self.starter_settles = starter_settles

    def _current_generation(self) -> int | None:
        apps = Application.objects.filter(name=self.app_name)
        if self.incarnation:
            apps = apps.filter(incarnation=self.incarnation)
        return apps.values_list("generation", flat=True).first()

    def _outdated(self) -> str | None:
        current = self._current_generation()
        if current is None:
            actions.close_request(self.request_id, error="application deleted before it started")
            return "gone"
        if current != self.generation:
            actions.close_request(self.request_id, error=SUPERSEDED, outcome=Outcome.SUPERSEDED)
            return "superseded"
        return None

    def run(self, attempt: int = 0, lock_wait: float = LOCK_WAIT, requeue: bool = True) -> str:
        """Start the app on each environment in turn. If another job holds the app's lock:
        requeue (queue workers) or keep waiting while still the latest request (in-process)."""
        outdated = self._outdated()
        if outdated:
            return outdated
        lock = self.lock
        while not lock.acquire(wait=lock_wait):
            if requeue:
                # An older job of this app is finishing its current environment: wait our turn
                # at the back of the queue rather than holding a queue worker.
                enqueue_start(
                    self.app_name,
                    self.environments,
                    generation=self.generation,
                    request_id=self.request_id,
                    attempt=attempt + 1,
                    incarnation=self.incarnation,
                )
                return "requeued"
            outdated = self._outdated()
            if outdated:
                return outdated
        try:
            return self._run_locked(lock)
        finally:
            lock.release()

    def _run_locked(self, lock: Lock) -> str:
        failed = False
        for env in self.environments:
            if lock.lost.is_set():
                # The environments not reached yet: this start did not happen there.
                actions.close_request(self.request_id, error="start lock lost (queue worker stalled); retry the start")
                return "error"
            outcome = actions.begin_environment_start(
                self.app_name, env, generation=self.generation, incarnation=self.incarnation
            )
            if outcome == "superseded":
                actions.close_request(self.request_id, error=SUPERSEDED, outcome=Outcome.SUPERSEDED)
                return "superseded"
            if outcome == "gone":
                # Deleted or taken off this environment by a later request.
                actions.record_outcome(self.request_id, env, Outcome.SUPERSEDED, error=f"{env}: no longer placed there")
                continue
            if outcome != "starting":
                actions.record_outcome(self.request_id, env, Outcome.OK)  # already running
                continue
            error = self._start_one(env)
            failed = failed or bool(error)
            if error:
                outcome = Outcome.NOT_DELIVERED if isinstance(error, Undelivered) else Outcome.ERROR
                actions.record_outcome(self.request_id, env, outcome, error=f"{env}: {error}")
            else:
                actions.record_outcome(self.request_id, env, Outcome.OK)
        actions.close_request(self.request_id)
        return "error" if failed else "ok"

    def _start_one(self, env: str) -> str | None:
        timeout = settings.APP_CONFIG.start_timeout
        deadline = time.monotonic() + timeout
        try:
            error = self.starter(
                self.app_name, env, generation=self.generation, request_id=self.request_id, timeout=timeout
            )
        except Exception as exc:  # the adapter failed to reach the environment
            log.exception("start of %s on %s failed", self.app_name, env)
            error = f"could not send the start: {exc}"
        if error:
            actions.record_app_status(self.app_name, env, AppStatus.ERROR, error=error)
            return error
        if self.starter_settles:
            return None
        # Even if a later request supersedes us meanwhile, wait for this environment to settle:
        # the next start of this app must not begin while this initialisation may still run.
        while True:
            status, error = self._status(env)
            if status is None:
                return None  # placement deleted
            if status in SETTLED:
                if status == AppStatus.STOPPED and self._current_generation() == self.generation:
                    # Still the latest request, yet the app is stopped there: the worker did
                    # not run this start (it dropped it as stale). Saying ok would be untrue.
                    return f"the app did not start on {env}: it reports stopped"
                return error if status == AppStatus.ERROR else None
            if time.monotonic() >= deadline:
                message = f"start timed out after {timeout:g} s"
                actions.record_app_status(self.app_name, env, AppStatus.ERROR, error=message)
                return message
            time.sleep(0.05)

    def _status(self, env: str) -> tuple[str | None, str]:
        try:
            self.ingest()
        except Exception:  # status stays as it is in the DB; the next poll tries again
            log.warning("event ingest failed", exc_info=True)
        row = (
            AppEnvironment.objects.filter(application__name=self.app_name, environment__name=env)
            .values_list("status", "error")
            .first()
        )
        return row if row else (None, "")
