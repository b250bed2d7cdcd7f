"""An instance's files are its account's alone: storage directories 0700, SQLite databases 0600.

The storage directory holds the registry or the apps' SQLite databases (sessions, password
hashes), the apps' uploads and the runtime state. Every role's process starts with the umask
``077`` (``settings.py``), so everything it creates afterwards, SQLite's own ``-wal`` and
``-shm`` files included, is private from the start; what an earlier version left readable is
tightened when the instance starts (the storage directory, the registry's database) or opens it
(an app's database)."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600
SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")


def restrict_new_files() -> None:
    """From now on this process (and what it starts) creates files for its own account only."""
    os.umask(PRIVATE_UMASK)


def _tighten(path: Path, mode: int) -> None:
    # Only what this account owns: a directory given by the operator that belongs to someone
    # else (a mount point) is theirs to set, and a failure here must not stop start-up.
    with contextlib.suppress(OSError):
        info = path.stat()
        if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & ~mode:
            path.chmod(stat.S_IMODE(info.st_mode) & mode)


def private_dir(path: Path) -> Path:
    """``path`` created (with its missing parents) or kept, accessible to this account only."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _tighten(path, DIR_MODE)
    return path


def private_sqlite(path: Path) -> None:
    """A SQLite database and its journal files, where they exist, readable by this account only."""
    for suffix in SQLITE_COMPANIONS:
        _tighten(path.with_name(path.name + suffix), FILE_MODE)
