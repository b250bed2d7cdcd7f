"""This agent's identity (docs/security.md, "Identity"): the key it signs everything with, and
the supervisor key it accepts commands from.

- Its own key: ENVIRONMENT_KEY (base64 of a 32-byte seed) or, when unset, one generated on
  first start and kept in ``<storage>/identity/<env>.key`` (mode 0600). The supervisor binds the
  environment's name to it on first sight, so losing the file means the operator re-binds.
- The supervisor's public key: SUPERVISOR_PUBLIC_KEY or, when unset, the one the supervisor
  publishes in the configuration cache, pinned in ``<storage>/identity/supervisor.pub`` the
  first time it is seen (trust on first use): someone who can write to Redis later cannot
  replace it. A published key that differs from the pinned one is logged once, never used.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from apps_registry import signing
from apps_registry.control import keys, redis_client
from supervisor_site.config import Config

log = logging.getLogger("worker_agent.agent")


class Identity:
    def __init__(self, config: Config) -> None:
        self.env = config.environment_name
        directory = Path(config.storage_dir) / "identity"
        if config.environment_key:
            self.key: Ed25519PrivateKey = signing.private_key(config.environment_key)
        else:
            self.key = signing.load_or_create(directory / f"{self.env}.key")
        self.public = signing.public_text(self.key)
        self.fingerprint = signing.fingerprint(self.public)
        self._pin_path = directory / "supervisor.pub"
        self._configured = config.supervisor_public_key
        self._pinned = config.supervisor_public_key or self._read_pin()
        self._lock = threading.Lock()
        self._mismatch_logged = ""

    def _read_pin(self) -> str:
        try:
            text = self._pin_path.read_text().strip()
        except FileNotFoundError:
            return ""
        if not signing.valid_public_text(text):
            log.error("ignoring %s: not a public key", self._pin_path)
            return ""
        return text

    def _pin(self, public: str) -> None:
        self._pin_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._pin_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(public + "\n")

    def supervisor_key(self) -> str:
        """The supervisor public key commands must verify with; "" while none is known (the
        supervisor has not published one yet and none is configured or pinned)."""
        with self._lock:
            if self._pinned:
                return self._pinned
            try:
                published = redis_client.get().get(keys.cfg_supervisor_key()) or ""
            except redis.RedisError:
                return ""
            if not signing.valid_public_text(published):
                return ""
            self._pin(published)
            self._pinned = published
            log.info(
                "pinned the supervisor's key %s on first sight (%s)", signing.fingerprint(published), self._pin_path
            )
            return published

    def note_published(self) -> None:
        """Log once if the published supervisor key is not the one trusted here (a rotated
        supervisor key, or a forged one): commands signed with it are refused."""
        if not self._pinned:
            return
        try:
            published = redis_client.get().get(keys.cfg_supervisor_key()) or ""
        except redis.RedisError:
            return
        if published and published != self._pinned and published != self._mismatch_logged:
            self._mismatch_logged = published
            source = "SUPERVISOR_PUBLIC_KEY" if self._configured else str(self._pin_path)
            log.warning(
                "the supervisor key published in Redis (%s) is not the one trusted here (%s, from %s); "
                "commands signed with it are refused",
                signing.fingerprint(published),
                signing.fingerprint(self._pinned),
                source,
            )
