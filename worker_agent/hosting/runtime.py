"""Start, stop and remove hosted apps in this environment.

These functions do the work in the calling process (the agent, ``manage.py host_app``, the
standalone start job) and record the outcome in the local state file, which the web
processes read on every request to ``/apps/<name>/``.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.conf import settings

from apps_registry.names import is_valid_name
from worker_agent.hosting import app_databases, app_figures, app_initialisation, app_logs, local_state, serving
from worker_agent.hosting.db_router import alias_for

log = logging.getLogger(__name__)

StatusListener = Callable[[str, str, str], None]
_listeners: list[StatusListener] = []
# One start/stop/remove at a time per app inside this process; other processes are kept
# apart by the database lock around initialisation.
_app_locks: dict[str, threading.Lock] = {}
_app_locks_guard = threading.Lock()


class AppStartError(Exception):
    """An app could not be started; the message is shown as the app's error status."""


def add_status_listener(listener: StatusListener) -> None:
    """Call ``listener(name, status, error)`` after every status this process records."""
    if listener not in _listeners:
        _listeners.append(listener)


def remove_status_listener(listener: StatusListener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def _record(name: str, status: str, *, error: str = "", spec: dict | None = None) -> None:
    local_state.set_status(name, status, error=error, spec=spec)
    if status == "stopped":
        # Stopped is true only once no web process serves the app: every request admitted
        # under the old state finishes before anyone (the agent's report) hears of it.
        serving.wait_drained(name)
    for listener in list(_listeners):
        try:
            listener(name, status, error)
        except Exception:  # a listener's fault must not change the outcome of a start
            log.exception("status listener failed for %s %s", name, status)


def _app_lock(name: str) -> threading.Lock:
    with _app_locks_guard:
        return _app_locks.setdefault(name, threading.Lock())


@contextmanager
def _app_operation(name: str) -> Iterator[None]:
    """One operation on ``name`` at a time in this process; a broken state file is an AppStartError."""
    with _app_lock(name):
        try:
            yield
        except local_state.StateFileError as error:
            raise AppStartError(str(error)) from None


def _checked_name(name: object) -> str:
    if not is_valid_name(name):
        raise AppStartError(f"invalid app name {name!r}")
    return name  # type: ignore[return-value]


def media_dir(name: str):
    """Uploaded files of app ``name``: ``<APP_MEDIA_DIR>/<name>/`` (default ``<storage>/media``)."""
    return settings.APP_CONFIG.media_dir / _checked_name(name)


def start_app(spec: dict) -> None:
    """Create, lock, migrate and seed the app's database if needed, then mark it running.

    Idempotent: starting a running app re-applies nothing but new migrations. Raises
    ``AppStartError`` (after recording status ``error`` with the same message) on failure.
    """
    if not isinstance(spec, dict):
        raise AppStartError("app spec must be an object")
    name = _checked_name(spec.get("name"))
    with _app_operation(name):
        # A start of a running app (a repeated command, reconciliation) keeps serving it
        # while it checks for new migrations, rather than flashing 503 "starting" — unless
        # what runs is a deleted app of the same name: the new one starts clean.
        entry = local_state.app_entry(name) or {}
        running_incarnation = str((entry.get("spec") or {}).get("incarnation") or "")
        same_app = not running_incarnation or running_incarnation == str(spec.get("incarnation") or "")
        if entry.get("status") == "running" and same_app:
            local_state.set_status(name, "running", spec=spec)
        else:
            _record(name, "starting", spec=spec)
        app_logs.record(name, "info", "starting: initialising its database and applying migrations")
        try:
            options = spec.get("options") or {}
            modules = app_databases.modules_of(spec)
            db = app_databases.describe(name, options)
            result = app_initialisation.initialise(
                db, modules, options.get("initial_admin"), settings.APP_CONFIG.environment_name
            )
            media_dir(name).mkdir(parents=True, exist_ok=True)
        except (app_databases.DatabaseError, AppStartError, OSError) as error:
            message = str(error) if not isinstance(error, OSError) else f"storage error: {error}"
            _record(name, "error", error=message)
            app_logs.record(name, "error", f"start failed: {message}")
            raise AppStartError(message) from None
        except Exception as error:
            log.exception("starting app %s failed", name)
            message = f"unexpected error: {type(error).__name__}: {error}"
            _record(name, "error", error=message)
            app_logs.record(name, "error", f"start failed: {message}")
            raise AppStartError(message) from None
        log.info(
            "app %s running (database %s, %d migration(s) applied%s)",
            name,
            db.name,
            result["migrations_applied"],
            ", first initialisation" if result["first"] else "",
        )
        app_logs.record(
            name,
            "info",
            f"started: database {db.name}{' created' if result['created'] else ''}, "
            f"{result['migrations_applied']} migration(s) applied"
            f"{', first initialisation' if result['first'] else ''}",
        )
        _record(name, "running")
        app_figures.database_measured(db)


def stop_app(name: str) -> None:
    """Stop serving the app here; its data stays. Stopping an unknown app is a no-op."""
    name = _checked_name(name)
    with _app_operation(name):
        if local_state.app_entry(name) is None:
            return
        _record(name, "stopping")
        app_databases.close(alias_for(name))
        _record(name, "stopped")
        app_logs.record(name, "info", "stopped")


def remove_app(name: str, drop_data: bool = False) -> None:
    """Stop the app and forget it here; with ``drop_data`` also delete its database and files."""
    name = _checked_name(name)
    with _app_operation(name):
        entry = local_state.app_entry(name)
        if entry is not None and entry.get("status") not in ("stopped", "error"):
            _record(name, "stopping")
            _record(name, "stopped")
        if drop_data:
            options = ((entry or {}).get("spec") or {}).get("options") or {}
            try:
                app_databases.drop(app_databases.describe(name, options))
                shutil.rmtree(media_dir(name), ignore_errors=True)
            except app_databases.DatabaseError as error:
                raise AppStartError(str(error)) from None
        local_state.forget(name)
        app_databases.unregister(alias_for(name))
        log.info("app %s removed%s", name, " with its data" if drop_data else "")


def running_apps() -> dict[str, dict]:
    """Apps whose status here is ``running``: name -> spec."""
    return {
        name: entry.get("spec") or {"name": name}
        for name, entry in local_state.read_apps().items()
        if entry.get("status") == "running"
    }


def app_statuses() -> dict[str, dict]:
    """Every app known here: name -> {status, error, generation}."""
    return {
        name: {"status": e.get("status"), "error": e.get("error", ""), "generation": e.get("generation", 0)}
        for name, e in local_state.read_apps().items()
    }
