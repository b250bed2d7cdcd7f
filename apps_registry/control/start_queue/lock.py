"""The per-app start lock: one start job of an app at a time, across queue workers."""

from __future__ import annotations

import logging
import secrets
import threading
import time

from django.conf import settings

from apps_registry.control import keys, redis_client

log = logging.getLogger(__name__)

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def lock_key(app_name: str) -> str:
    return keys.start_lock(app_name)


class StartLock:
    """A per-app lock: ``SET NX PX`` with an owner token, renewed by a thread while held,
    released only by its owner (compare-and-delete). If renewal fails the lock is lost and
    ``lost`` is set, so the holder stops before touching the next environment."""

    def __init__(self, app_name: str, ttl: float | None = None):
        self.key = lock_key(app_name)
        self.ttl_ms = int((ttl or settings.APP_CONFIG.start_lock_ttl) * 1000)
        self.token = secrets.token_hex(16)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._redis = redis_client.commands()

    def acquire(self, wait: float = 0.0) -> bool:
        deadline = time.monotonic() + wait
        while True:
            if self._redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
                self._thread = threading.Thread(target=self._renew_loop, name=f"renew {self.key}", daemon=True)
                self._thread.start()
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _renew_loop(self) -> None:
        interval = self.ttl_ms / 3000
        while not self._stop.wait(interval):
            try:
                if not self._redis.eval(_RENEW, 1, self.key, self.token, self.ttl_ms):
                    self.lost.set()
                    return
            except Exception:  # Redis hiccup: try again, the expiry leaves room for two misses
                log.warning("could not renew %s", self.key, exc_info=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._redis.eval(_RELEASE, 1, self.key, self.token)
        except Exception:  # it expires on its own
            log.warning("could not release %s", self.key, exc_info=True)
