"""The highest configuration-cache epoch this agent has acted on, kept in its storage.

The supervisor writes the registry's epoch into the cache with every change (``P:cfg:epoch``).
A cache whose epoch is lower than one this agent already applied is older than what it has
seen (Redis restored from an older snapshot): acting on it could start apps operators have
stopped since. Such a cache is not acted on; the agent waits (logged once) until the
supervisor, which notices the same, has rebuilt it from the registry. The highest epoch is
kept in ``<storage>/runtime/<env>.epoch`` so that a restarted agent remembers it too.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger("worker_agent.agent")


class EpochGuard:
    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._waiting = False
        self.highest = self._load()

    def _load(self) -> int:
        if self._path is None:
            return 0
        try:
            return int(self._path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as error:
            log.warning("configuration epoch file %s unreadable (%s); starting from 0", self._path, error)
            return 0

    def _store(self, epoch: int) -> None:
        if self._path is None:
            return
        # Written aside and renamed: a crash never leaves a half-written number behind.
        self._path.parent.mkdir(parents=True, exist_ok=True)
        spare = self._path.with_name(self._path.name + ".tmp")
        spare.write_text(f"{epoch}\n")
        os.replace(spare, self._path)

    def accept(self, epoch: int) -> bool:
        """True if a cache read at ``epoch`` may be acted on (and remember it as applied)."""
        with self._lock:
            if epoch < self.highest:
                if not self._waiting:
                    self._waiting = True
                    log.warning(
                        "configuration cache is older (epoch %d) than one already applied here (%d): "
                        "not acting on it until the supervisor rebuilds it",
                        epoch,
                        self.highest,
                    )
                return False
            if self._waiting:
                self._waiting = False
                log.warning("configuration cache caught up (epoch %d); acting on it again", epoch)
            if epoch > self.highest:
                try:
                    self._store(epoch)
                except OSError as error:
                    log.warning("cannot record configuration epoch %d in %s: %s", epoch, self._path, error)
                self.highest = epoch
            return True
