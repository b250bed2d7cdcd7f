"""Ed25519 signatures of the protocol's messages, for both sides (docs/security.md, "Identity").

A signature covers exactly these bytes (UTF-8)::

    appsup-sig-v1 \\n <kind> \\n <environment name> \\n <body>

where ``kind`` is the message type (``register``, ``heartbeat``, ``deregister``, ``status``,
``ack``, ``lease`` or ``command``), the environment is the one the message speaks for (an event's
``env``, a command's target stream), and ``body`` is the message's own canonical text: an
event's ``data`` string as written (sorted-key JSON, so equal data is equal bytes), a lease's
or a command's sorted-key JSON of its fields (``canonical``). Binding the kind and the
environment means a signed status cannot be replayed as an ack, nor one environment's message
as another's. Keys and signatures travel as standard base64 (a public key is 32 raw bytes,
44 characters; a signature 64 bytes, 88 characters).

Verifying costs ~0.1 ms: public keys are parsed once per distinct text (``public_key``).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

DOMAIN = "appsup-sig-v1"
SEED_BYTES = 32
MAX_SIGNATURE_TEXT = 100


class BadKey(ValueError):
    """A key that cannot be read (wrong base64, wrong length); the message says which."""


def canonical(fields: dict[str, Any]) -> str:
    """Sorted-key JSON without spaces: the one text a dict of fields is signed as."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _message(kind: str, env: str, body: str) -> bytes:
    return f"{DOMAIN}\n{kind}\n{env}\n{body}".encode("utf-8", "surrogatepass")


def private_key(seed_text: str) -> Ed25519PrivateKey:
    """A private key from base64 of its 32-byte seed (ENVIRONMENT_KEY, SUPERVISOR_KEY)."""
    try:
        seed = base64.b64decode(seed_text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadKey("is not base64") from None
    if len(seed) != SEED_BYTES:
        raise BadKey(f"must be base64 of a {SEED_BYTES}-byte Ed25519 seed (got {len(seed)} bytes)")
    return Ed25519PrivateKey.from_private_bytes(seed)


def generate() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def seed_text(key: Ed25519PrivateKey) -> str:
    """base64 of the key's 32-byte seed: the format of ENVIRONMENT_KEY and SUPERVISOR_KEY."""
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return base64.b64encode(raw).decode()


def public_text(key: Ed25519PrivateKey) -> str:
    """base64 of the 32-byte public key: what a registration carries and the registry binds."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


@functools.lru_cache(maxsize=4096)
def public_key(text: str) -> Ed25519PublicKey:
    """The parsed public key of its base64 text; cached, since the same few keys verify every
    message. BadKey for a text that is not one."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadKey("public key is not base64") from None
    if len(raw) != SEED_BYTES:
        raise BadKey(f"public key must be {SEED_BYTES} bytes (got {len(raw)})")
    return Ed25519PublicKey.from_public_bytes(raw)


def valid_public_text(text: object) -> bool:
    if not isinstance(text, str) or len(text) > 60:
        return False
    try:
        public_key(text)
    except BadKey:
        return False
    return True


def fingerprint(public: str) -> str:
    """A short, stable name of a public key for logs, the admin and the audit: 16 hex digits
    of its SHA-256."""
    return hashlib.sha256(public.encode()).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, kind: str, env: str, body: str) -> str:
    return base64.b64encode(key.sign(_message(kind, env, body))).decode()


def verify(public: str, kind: str, env: str, body: str, signature: object) -> bool:
    """True only if ``signature`` is ``public``'s signature of this kind, environment and body;
    anything malformed is simply not valid (never an exception)."""
    if not isinstance(signature, str) or not signature or len(signature) > MAX_SIGNATURE_TEXT:
        return False
    try:
        raw = base64.b64decode(signature, validate=True)
        public_key(public).verify(raw, _message(kind, env, body))
    except (binascii.Error, ValueError, InvalidSignature, BadKey, UnicodeEncodeError):
        return False
    return True


def load_or_create(path: Path) -> Ed25519PrivateKey:
    """The key kept in ``path`` (its seed, base64), created on first use with mode 0600 in a
    directory of mode 0700: generated once, it must survive restarts, or the name it is bound
    to is lost."""
    try:
        return private_key(path.read_text())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = generate()
    # O_EXCL: two processes starting at once must not each write a key of their own.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return private_key(path.read_text())
    with os.fdopen(fd, "w") as handle:
        handle.write(seed_text(key) + "\n")
    return key
