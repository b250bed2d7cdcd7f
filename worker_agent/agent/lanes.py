"""Per-app lanes: a bounded pool where one app's tasks run in order and different apps' in
parallel."""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable

log = logging.getLogger("worker_agent.agent")


class AppLanes:
    """A bounded pool where each app's tasks run one at a time, in submission order."""

    def __init__(self, size: int, run: Callable[[object], None]):
        self._run = run
        self._lock = threading.Lock()
        self._pending: dict[str, collections.deque] = {}
        self._busy: set[str] = set()
        self._ready: queue.Queue[str | None] = queue.Queue()
        self._closing = False
        self._idle = threading.Condition(self._lock)
        self._threads = [threading.Thread(target=self._work, name=f"lane-{i}", daemon=True) for i in range(size)]
        for thread in self._threads:
            thread.start()

    def submit(self, app: str, task: object) -> None:
        with self._lock:
            if self._closing:
                return
            self._pending.setdefault(app, collections.deque()).append(task)
            if app not in self._busy:
                self._busy.add(app)
                self._ready.put(app)

    def queued(self, app: str) -> int:
        with self._lock:
            return len(self._pending.get(app, ()))

    def _work(self) -> None:
        while True:
            app = self._ready.get()
            if app is None:
                return
            while True:
                with self._lock:
                    tasks = self._pending.get(app)
                    if self._closing or not tasks:
                        self._pending.pop(app, None)
                        self._busy.discard(app)
                        self._idle.notify_all()
                        break
                    task = tasks.popleft()
                try:
                    self._run(task)
                except Exception:  # the lane must survive whatever a task does
                    log.exception("command lane for %s: task failed", app)

    def close(self, timeout: float) -> bool:
        """Drop tasks not yet started, wait for running ones; True if all finished in time."""
        with self._lock:
            self._closing = True
            for tasks in self._pending.values():
                tasks.clear()
            deadline = time.monotonic() + timeout
            while self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._idle.wait(remaining)
            finished = not self._busy
        for _ in self._threads:
            self._ready.put(None)
        return finished
