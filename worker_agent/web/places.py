"""How many hosted requests a web process serves at once: at most ``total`` in all (each may
hold a database connection: this is what bounds them under gevent) and at most ``per_app``
for any one app, so that one app's crowd waits behind its own requests, not in front of the
other apps' (docs/architecture.md, "Database connections under gevent").

A request beyond either bound waits for a place, with a deadline, instead of being refused at
once: under gevent a waiting request costs a greenlet and no CPU, and the supervisor in front
already refuses fast beyond its own per-app cap. Counted per process, in memory; the counts of
an app are forgotten when it has no request left, so unknown names cannot grow the table.
"""

from __future__ import annotations

import threading
import time


class Places:
    def __init__(self, total: int, per_app: int) -> None:
        self.total = total
        self.per_app = min(per_app, total)
        # Created in the serving process, after gevent's monkey-patching where it applies:
        # then this is gevent's condition and a waiting request yields to the others.
        self._changed = threading.Condition()
        self._per_app_in_use: dict[str, int] = {}
        self._in_use = 0

    def take(self, name: str, wait: float) -> bool:
        """A place for a request of ``name``, waiting at most ``wait`` seconds; False if none."""
        deadline = time.monotonic() + wait
        with self._changed:
            while self._in_use >= self.total or self._per_app_in_use.get(name, 0) >= self.per_app:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            self._per_app_in_use[name] = self._per_app_in_use.get(name, 0) + 1
            self._in_use += 1
            return True

    def give_back(self, name: str) -> None:
        with self._changed:
            left = self._per_app_in_use.get(name, 0) - 1
            if left > 0:
                self._per_app_in_use[name] = left
            else:
                self._per_app_in_use.pop(name, None)
            self._in_use = max(0, self._in_use - 1)
            self._changed.notify_all()

    def in_use(self, name: str | None = None) -> int:
        with self._changed:
            return self._in_use if name is None else self._per_app_in_use.get(name, 0)
