"""The local runtime state: which apps this environment hosts and in what state.

One JSON file per environment, ``<storage>/runtime/<ENVIRONMENT_NAME>.json``, written by
whoever starts and stops apps (the agent, ``manage.py host_app``) and read by every web
process on each request to ``/apps/<name>/``. Writers replace the file atomically (tmp file +
``os.replace``) under an exclusive file lock, so readers never see half a file and two
writers never lose each other's update. Readers keep the parsed file and re-read it only when
``stat()`` shows a change. Writers give every new file an mtime strictly after the previous
one's, so a change is always visible to ``stat()`` where the filesystem keeps nanosecond
times; ``MAX_CACHE_AGE`` re-reads anyway where it does not (a coarser clock on the mount).

File layout::

    {"version": 1, "apps": {"<name>": {"status": "running", "error": "", "spec": {...},
                                       "generation": 3, "updated_at": 1700000000.0}}}
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings

from worker_agent.hosting.file_lock import file_lock

log = logging.getLogger(__name__)

STATUSES = ("stopped", "starting", "running", "stopping", "error")
FORMAT_VERSION = 1
MAX_CACHE_AGE = 0.5

_cache_lock = threading.Lock()
# path -> (stat key, time read, parsed apps)
_cache: dict[str, tuple[tuple, float, dict[str, dict]]] = {}
_write_lock = threading.Lock()


def state_path() -> Path:
    config = settings.APP_CONFIG
    return config.storage_dir / "runtime" / f"{config.environment_name}.json"


def _stat_key(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class StateFileError(Exception):
    """The state file exists but cannot be parsed; writers refuse to overwrite it."""


def _load(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as error:
        raise StateFileError(f"runtime state file {path} is not valid JSON ({error}); fix or delete it") from None
    apps = data.get("apps") if isinstance(data, dict) else None
    if not isinstance(apps, dict):
        raise StateFileError(f"runtime state file {path} has no 'apps' object; fix or delete it")
    return apps


def read_apps(path: Path | None = None) -> dict[str, dict]:
    """Every app entry in the state file (cached; treat the result as read-only)."""
    path = path or state_path()
    key = str(path)
    stat_key = _stat_key(path)
    now = time.monotonic()
    cached = _cache.get(key)
    if cached and cached[0] == stat_key and now - cached[1] < MAX_CACHE_AGE:
        return cached[2]
    with _cache_lock:
        try:
            apps = _load(path) if stat_key is not None else {}
        except StateFileError as error:
            # Serve nothing rather than fail every request; say why once per change.
            if not cached or cached[0] != stat_key:
                log.error("%s", error)
            apps = {}
        _cache[key] = (stat_key, now, apps)
    return apps


def app_entry(name: str, path: Path | None = None) -> dict | None:
    """The entry of one app, or None when this environment does not know it."""
    return read_apps(path).get(name)


def app_status(name: str, path: Path | None = None) -> str | None:
    entry = app_entry(name, path)
    return entry.get("status") if entry else None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    # The thread lock covers threads of one process; flock covers other processes.
    with _write_lock, file_lock(path.with_suffix(".lock")):
        yield


def _write(path: Path, apps: dict[str, dict]) -> None:
    """Replace the file (under the write lock) so that every write changes its ``stat()`` key.

    Left to the kernel, two writes could give the same key: the file's mtime ticks coarsely
    (a few ms), ``running`` and ``stopped`` are entries of the same size, and the inode freed
    by one replace is reused by the next. Readers then kept serving a stopped app until their
    cache aged out (``MAX_CACHE_AGE``), after the agent had already reported ``stopped``. So
    the new file's mtime is set explicitly, strictly after the one it replaces: once this
    returns, the next ``stat()`` of any web process sees a new key and re-reads the file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as handle:
        json.dump({"version": FORMAT_VERSION, "apps": apps}, handle, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        previous = os.stat(path).st_mtime_ns
    except FileNotFoundError:
        previous = 0
    stamp = max(time.time_ns(), previous + 1)
    os.utime(tmp, ns=(stamp, stamp))
    os.replace(tmp, path)


def update(change: Callable[[dict[str, dict]], Any], path: Path | None = None) -> Any:
    """Apply ``change`` to a fresh copy of the apps under the write lock and save the result."""
    path = path or state_path()
    with _locked(path):
        apps = _load(path)
        result = change(apps)
        _write(path, apps)
    return result


def set_status(
    name: str,
    status: str,
    *,
    error: str = "",
    spec: dict | None = None,
    path: Path | None = None,
) -> dict:
    """Record ``status`` for ``name`` (keeping its spec unless a new one is given)."""
    if status not in STATUSES:
        raise ValueError(f"unknown app status {status!r}; expected one of {', '.join(STATUSES)}")

    def change(apps: dict[str, dict]) -> dict:
        entry = dict(apps.get(name) or {})
        if spec is not None:
            entry["spec"] = spec
            entry["generation"] = int(spec.get("generation") or 0)
        entry.setdefault("spec", {"name": name, "options": {}})
        entry.setdefault("generation", 0)
        entry.update(status=status, error=error if status == "error" else "", updated_at=time.time())
        apps[name] = entry
        return entry

    return update(change, path)


def forget(name: str, path: Path | None = None) -> bool:
    """Remove an app's entry; True if there was one."""
    return update(lambda apps: apps.pop(name, None) is not None, path)
