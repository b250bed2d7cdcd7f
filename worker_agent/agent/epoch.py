"""The newest configuration cache this agent has acted on, kept in its storage.

The supervisor writes the registry's epoch into the cache with every change (``P:cfg:epoch``).
A cache whose epoch is lower than one this agent already applied is older than what it has
seen (Redis restored from an older snapshot): acting on it could start apps operators have
stopped since. Such a cache is not acted on; the agent waits (logged once) until the
supervisor, which notices the same, has rebuilt it from the registry.

A rebuild is the registry's word, whatever its epoch: a cache whose rebuild marker
(``P:cfg:built``, with the supervisor's time of the rebuild) is newer than the one recorded
here is accepted and its epoch becomes the one to compare with (a registry restored from a
backup, or a second registry sharing the cache, as in the test suite, must not lock agents
out). A restored snapshot never carries a marker newer than one the agent already saw.

Kept in ``<storage>/runtime/<env>.epoch`` (JSON ``{"epoch": n, "built": marker}``) so that a
restarted agent remembers it too.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from pathlib import Path

from apps_registry.control.discovery import Stamp

log = logging.getLogger("worker_agent.agent")


def _built_at(marker: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(json.loads(marker)["at"])
    except (TypeError, ValueError, KeyError):
        return None


class EpochGuard:
    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._waiting = False
        self.highest, self._built = self._load()

    def _load(self) -> tuple[int, str]:
        if self._path is None:
            return 0, ""
        try:
            saved = json.loads(self._path.read_text())
            return int(saved["epoch"]), str(saved.get("built") or "")
        except FileNotFoundError:
            return 0, ""
        except (OSError, ValueError, TypeError, KeyError) as error:
            log.warning("configuration epoch file %s unreadable (%s); starting from 0", self._path, error)
            return 0, ""

    def _store(self) -> None:
        if self._path is None:
            return
        # Written aside and renamed: a crash never leaves half a file behind.
        self._path.parent.mkdir(parents=True, exist_ok=True)
        spare = self._path.with_name(self._path.name + ".tmp")
        spare.write_text(json.dumps({"epoch": self.highest, "built": self._built}) + "\n")
        os.replace(spare, self._path)

    def _rebuilt_since(self, built: str) -> bool:
        new, old = _built_at(built), _built_at(self._built)
        return new is not None and (old is None or new > old)

    def accept(self, stamp: Stamp) -> bool:
        """True if a cache read with this stamp may be acted on (and remember it as applied)."""
        with self._lock:
            rebuilt = stamp.built != self._built and self._rebuilt_since(stamp.built)
            if stamp.epoch < self.highest and not rebuilt:
                if not self._waiting:
                    self._waiting = True
                    log.warning(
                        "configuration cache is older (epoch %d) than one already applied here (%d): "
                        "not acting on it until the supervisor rebuilds it",
                        stamp.epoch,
                        self.highest,
                    )
                return False
            if self._waiting:
                self._waiting = False
                log.warning("configuration cache caught up (epoch %d); acting on it again", stamp.epoch)
            # A newer rebuild resets the epoch to compare with (it may be lower: see above).
            highest, built = (stamp.epoch, stamp.built) if rebuilt else (max(self.highest, stamp.epoch), self._built)
            if (highest, built) != (self.highest, self._built):
                self.highest, self._built = highest, built
                try:
                    self._store()
                except OSError as error:
                    log.warning("cannot record configuration epoch %d in %s: %s", highest, self._path, error)
            return True
