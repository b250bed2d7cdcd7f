"""An exclusive lock on a file (``flock``): it excludes other processes of this machine and, as
each acquisition opens the file anew, other threads too; the kernel releases it when the
holder dies, so a crash never wedges what it guarded."""

from __future__ import annotations

import fcntl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

POLL = 0.02


class FileLock:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lost = threading.Event()  # a flock cannot be lost while the process lives
        self._file: IO[str] | None = None

    def acquire(self, wait: float | None = 0.0) -> bool:
        """Take the lock, waiting at most ``wait`` seconds (None: as long as it takes)."""
        handle = open(self.path, "a")  # noqa: SIM115 - kept open while the lock is held
        if wait is None:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._file = handle
            return True
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._file = handle
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.close()
                    return False
                time.sleep(POLL)

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


@contextmanager
def file_lock(path: str | Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the lock on ``path`` for the block; TimeoutError if it is not had within ``timeout``."""
    lock = FileLock(path)
    if not lock.acquire(timeout):
        raise TimeoutError(f"{path} stayed locked for {timeout:g} s")
    try:
        yield
    finally:
        lock.release()
