"""The supervisor's signing key: every command it sends carries its signature, and agents act
only on commands that verify with the supervisor key they trust (docs/security.md).

The key is SUPERVISOR_KEY when set, otherwise one generated once and kept in the registry
database (``SigningKey``), so every supervisor process of one registry signs alike. Its public
half is published in the configuration cache (``P:cfg:supervisor-key``) for agents that have
not pinned one; an agent pins the first it sees (or SUPERVISOR_PUBLIC_KEY), so replacing the
published value later does not make it accept a forger's commands.
"""

from __future__ import annotations

import logging
import threading

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.db import IntegrityError, transaction

from apps_registry import signing
from apps_registry.control import keys, redis_client
from apps_registry.models import SigningKey

log = logging.getLogger(__name__)

_NAME = "supervisor"
_lock = threading.Lock()
_key: Ed25519PrivateKey | None = None
_published = False


def key() -> Ed25519PrivateKey:
    """The supervisor's private key, loaded (or generated and stored) once per process."""
    global _key
    if _key is not None:
        return _key
    with _lock:
        if _key is None:
            configured = settings.APP_CONFIG.supervisor_key
            _key = signing.private_key(configured) if configured else _stored_key()
            log.info("supervisor signing key %s", signing.fingerprint(signing.public_text(_key)))
    return _key


def _stored_key() -> Ed25519PrivateKey:
    row = SigningKey.objects.filter(name=_NAME).first()
    if row is None:
        try:
            with transaction.atomic():
                row = SigningKey.objects.create(name=_NAME, seed=signing.seed_text(signing.generate()))
        except IntegrityError:  # another process created it first: use that one
            row = SigningKey.objects.get(name=_NAME)
    return signing.private_key(row.seed)


def public() -> str:
    return signing.public_text(key())


def publish(force: bool = False) -> None:
    """Publish the public key in the configuration cache (once per process unless ``force``:
    a rebuild re-publishes it, since Redis may have come back empty)."""
    global _published
    if _published and not force:
        return
    redis_client.get().set(keys.cfg_supervisor_key(), public())
    _published = True


def reset() -> None:
    """Forget the loaded key (tests that change SUPERVISOR_KEY)."""
    global _key, _published
    with _lock:
        _key = None
        _published = False
