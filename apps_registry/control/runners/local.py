"""The local process adapter (standalone): apps run in this process, no Redis needed.

Starts behave as on a supervisor with a queue: each request runs in a small bounded thread
pool, one app's operations are serialised by a per-app file lock (so the web processes of
one instance exclude each other too, and a crashed process releases it), and the app's
generation decides which request wins. Statuses are recorded through ``actions`` exactly as
the worker events would record them.

The start timeout cannot interrupt an initialisation running in this process; it applies to
workers only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from django.conf import settings
from django.db import connections

from apps_registry.control import specs
from apps_registry.control.start_queue.job import SUPERSEDED, StartJob
from apps_registry.models import Application, AppStatus, AuditEntry
from apps_registry.names import validate_app_name
from apps_registry.registry import actions
from worker_agent.hosting import runtime
from worker_agent.hosting.file_lock import FileLock

log = logging.getLogger(__name__)

_pool: ThreadPoolExecutor | None = None
_pool_guard = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_guard:
        if _pool is None:
            size = max(1, min(4, settings.APP_CONFIG.command_concurrency))
            _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="app-ops")
        return _pool


def _start_lock(app_name: str) -> FileLock:
    """The app's start lock, ``<storage>/locks/start-<app>.lock``: excludes the threads and web
    processes of this instance alike."""
    validate_app_name(app_name)
    folder = Path(settings.APP_CONFIG.storage_dir) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(folder / f"start-{app_name}.lock")


def _spec(app_name: str) -> dict:
    """The app's AppSpec, read from the registry (this process is the registry)."""
    return specs.app_spec(specs.applications().get(name=app_name))


def _in_thread(fn: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except Exception:
            log.exception("app operation failed")
        finally:
            connections.close_all()

    return run


class LocalProcessAdapter:
    """Process adapter of standalone mode."""

    # --- the outbox's interface ---

    def check_channel(self) -> None:
        """Nothing to reach: requests run in this process."""

    def start(self, app_pk: int, environments: Sequence[str], *, generation: int, request_id: str) -> Future:
        name = Application.objects.filter(pk=app_pk).values_list("name", flat=True).first()
        if name is None:
            return self._submit(lambda: actions.close_request(request_id, error="application deleted"))
        job = self.start_job(name, environments, generation=generation, request_id=request_id)
        return self._submit(lambda: job.run(lock_wait=1.0, requeue=False))

    # ``incarnation``: standalone has one process, whose registry is right here; the generation
    # check against the current row already tells a re-created app from the deleted one.

    def stop(
        self, name: str, environments: Sequence[str], *, generation: int, request_id: str, incarnation: str = ""
    ) -> Future:
        return self._submit(lambda: self._serialised(name, environments, generation, request_id, self._stop_here))

    def restart(
        self, name: str, environments: Sequence[str], *, generation: int, request_id: str, incarnation: str = ""
    ) -> Future:
        return self._submit(lambda: self._serialised(name, environments, generation, request_id, self._restart_here))

    def remove(
        self,
        name: str,
        environments: Sequence[str],
        *,
        generation: int,
        request_id: str,
        drop_data: bool,
        incarnation: str = "",
    ) -> Future:
        def remove_here(env: str) -> None:
            runtime.remove_app(name, drop_data=drop_data)
            actions.record_app_status(name, env, AppStatus.STOPPED)

        return self._submit(
            lambda: self._serialised(name, environments, generation, request_id, remove_here, deleted_ok=True)
        )

    # --- used by the start job ---

    def start_job(self, name: str, environments: Sequence[str], *, generation: int, request_id: str) -> StartJob:
        """The start job of one request, run in this process under the app's file lock."""
        return StartJob(
            name,
            environments,
            generation=generation,
            request_id=request_id,
            starter=self.start_on_environment,
            ingest=lambda: None,  # statuses are recorded in this process as they change
            lock=_start_lock(name),
            # start_on_environment returns when the start is over and records its status.
            starter_settles=True,
        )

    def start_on_environment(
        self, app_name: str, env: str, *, generation: int, request_id: str, timeout: float
    ) -> str | None:
        """Initialise the app in this process; returns an error message or None. The status
        is recorded here, so the job's wait ends at once."""
        try:
            runtime.start_app(_spec(app_name))
        except runtime.AppStartError as error:
            actions.record_app_status(app_name, env, AppStatus.ERROR, error=str(error))
            return str(error)
        except Exception as error:
            log.exception("start of %s failed", app_name)
            message = f"{type(error).__name__}: {error}"
            actions.record_app_status(app_name, env, AppStatus.ERROR, error=message)
            return message
        actions.record_app_status(app_name, env, AppStatus.RUNNING)
        return None

    # --- internals ---

    def _submit(self, fn: Callable[[], object]) -> Future:
        return _executor().submit(_in_thread(fn))

    def _stop_here(self, name: str, env: str) -> None:
        runtime.stop_app(name)
        actions.record_app_status(name, env, AppStatus.STOPPED)

    def _restart_here(self, name: str, env: str) -> None:
        runtime.stop_app(name)
        actions.record_app_status(name, env, AppStatus.STARTING)
        self.start_on_environment(name, env, generation=0, request_id="", timeout=0)

    def _serialised(
        self,
        name: str,
        environments: Sequence[str],
        generation: int,
        request_id: str,
        operation: Callable[[str, str], None],
        deleted_ok: bool = False,
    ) -> None:
        lock = _start_lock(name)
        lock.acquire(wait=24 * 3600)
        try:
            current = Application.objects.filter(name=name).values_list("generation", flat=True).first()
            if (current is None and not deleted_ok) or (current is not None and current != generation):
                actions.close_request(request_id, error=SUPERSEDED, outcome=AuditEntry.Outcome.SUPERSEDED)
                return
            errors = []
            for env in sorted(environments):
                try:
                    operation(name, env)
                except Exception as error:
                    log.exception("%s on %s failed", name, env)
                    errors.append(f"{env}: {error}")
            actions.close_request(request_id, error="; ".join(errors))
        finally:
            lock.release()
