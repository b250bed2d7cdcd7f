"""Reconciliation against the configuration cache: at start-up and every
``APP_RECONCILE_INTERVAL``, converge each app placed here towards its ``desired_running``,
unload apps that run here but are no longer placed here; and, before anything else at
start-up, finish what a crash interrupted.

Each step runs in the app's lane like a command and is re-checked against fresh state when
its turn comes. A cache that is not built postpones reconciliation: an empty Redis (restarted,
flushed) never stops apps. Only a built cache that does not place a running app here unloads it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from apps_registry.control.discovery import CacheNotReady, get_discovery
from apps_registry.names import is_valid_name
from worker_agent.agent.commands import CommandError
from worker_agent.agent.executor import Executor, running_apps, spec_generation, spec_incarnation
from worker_agent.agent.inbox import Generations
from worker_agent.agent.link import RedisLink
from worker_agent.hosting import local_state, runtime

log = logging.getLogger("worker_agent.agent")

Submit = Callable[[str, Callable[[], None]], None]
Queued = Callable[[str], int]


class Reconciler:
    def __init__(
        self,
        *,
        env: str,
        link: RedisLink,
        executor: Executor,
        generations: Generations,
        submit: Submit,
        queued: Queued,
        interval: float,
    ) -> None:
        self.env = env
        self.link = link
        self.executor = executor
        self.generations = generations
        self._submit = submit
        self._queued = queued
        self._interval = interval
        self._next = 0.0
        self._cache_ready = True
        self._strays: set[str] = set()  # strays already logged, so a failing unload logs once

    def _desired(self, spec: dict) -> bool:
        placement = (spec.get("environments") or {}).get(self.env)
        return bool(placement and placement.get("desired_running"))

    # --- periodic ---------------------------------------------------------------------------------

    def is_due(self) -> bool:
        return time.monotonic() >= self._next

    def due(self) -> None:
        """Reconcile if the interval has passed (called from the main loop)."""
        if self.is_due():
            self._next = time.monotonic() + self._interval
            self.reconcile()

    def soon(self) -> None:
        """Reconcile at the next chance (Redis is back: the cache may have moved on)."""
        self._next = 0.0

    def reconcile(self) -> None:
        """Queue a convergence step for every app whose desired and actual states differ."""
        running = running_apps()
        try:
            stamp, specs = get_discovery().apps_for_environment_at(self.env)
        except redis.RedisError:
            raise
        except CacheNotReady:
            if self._cache_ready:  # one line per change, not one per interval
                log.info("reconciliation postponed until the supervisor builds the configuration cache")
            self._cache_ready = False
            return
        except Exception:
            log.exception("reconciliation: cannot list this environment's apps")
            return
        if not self.executor.epochs.accept(stamp):
            return  # older than a cache already applied here (logged once): wait for the rebuild
        if not self._cache_ready:
            log.info("configuration cache available: reconciling %d app(s) placed here", len(specs or []))
        self._cache_ready = True
        placed = set()
        for spec in specs or []:
            name = spec.get("name")
            if not is_valid_name(name):
                continue
            placed.add(name)
            desired = self._desired(spec)
            if desired and self.executor.start_failed_for(spec):
                continue  # it failed for this very request: wait for a new one, do not loop
            if desired != (name in running) and not self._queued(name):
                self._submit(name, lambda name=name: self._converge(name))
        # Running here but placed here no longer (the environment was forgotten, or the app
        # removed, while this worker was away): the registry will never send a command for it,
        # so unload it. Only from a built cache (CacheNotReady returned above).
        for name in sorted(set(running) - placed):
            if is_valid_name(name) and not self._queued(name):
                self._submit(name, lambda name=name: self._unload_stray(name))
        self._strays &= set(running)  # an app unloaded (or back) may be logged again later

    def _converge(self, app: str) -> None:
        """Re-check against fresh state when the lane gets to it, then act."""
        try:
            spec = self.executor.spec(app)
        except redis.RedisError as error:
            self.link.lost(error)
            return
        except CommandError:
            return
        if spec is None or spec_generation(spec) < self.generations.get(app, spec_incarnation(spec)):
            return  # the cache is behind a command this agent already saw
        desired = self._desired(spec)
        running = app in running_apps()
        if desired and self.executor.start_failed_for(spec):
            return
        try:
            if desired and not running:
                log.info("reconciliation: starting %s", app)
                self.executor.start(app, spec)
            elif not desired and running:
                log.info("reconciliation: stopping %s", app)
                self.executor.stop(app)
        except CommandError as error:
            log.warning("reconciliation of %s: %s", app, error)
        except Exception:
            log.exception("reconciliation of %s failed", app)

    def _unload_stray(self, app: str) -> None:
        """Unload an app that runs here but is not placed here (data kept), after checking the
        cache again: it may have been placed here meanwhile."""
        try:
            spec = self.executor.spec(app)
        except redis.RedisError as error:
            self.link.lost(error)
            return
        except CommandError:
            return  # the cache is not built (any more): never unload on an empty cache
        if spec is not None and self.env in (spec.get("environments") or {}):
            return
        if app not in running_apps():
            return
        if app not in self._strays:
            self._strays.add(app)
            log.info("reconciliation: unloading %s, which runs here but is not placed on %s (data kept)", app, self.env)
        try:
            self.executor.unload(app)
        except Exception:
            log.exception("reconciliation: unloading %s failed", app)

    # --- at start-up ------------------------------------------------------------------------------

    def resume_interrupted(self) -> None:
        """Finish what a crash (SIGKILL) interrupted, from the local state file alone, so it
        works while Redis is down: a start in progress is started again, a stop finished."""
        for name, entry in runtime.app_statuses().items():
            if entry.get("status") == "starting":
                spec = (local_state.app_entry(name) or {}).get("spec")
                if isinstance(spec, dict) and spec.get("name") == name:
                    log.info("resuming the interrupted start of %s", name)
                    self._submit(name, lambda name=name, spec=spec: self._resume(name, spec))
            elif entry.get("status") == "stopping":
                log.info("finishing the interrupted stop of %s", name)
                self._submit(name, lambda name=name: self._resume(name, None))

    def _resume(self, app: str, spec: dict | None) -> None:
        try:
            if spec is None:
                self.executor.stop(app)
            else:
                self.executor.start(app, spec)
        except Exception as error:  # reported as the app's error status by Executor.start
            log.warning("resuming %s failed: %s", app, error)
