"""Signing for tests that write protocol entries straight into Redis (docs/security.md):
the ingest and the agents check every signature, so a test that plays a worker signs as one,
and a test that plays the supervisor signs with the run's supervisor key. Nothing here
weakens a check; a forged entry in a test is one written *without* these.

- ``env_key(name)``: a fixed key per environment name, for environments a test invents;
- ``worker_key(worker)``: the key a real cluster worker generated in its storage;
- ``signed_event(message)`` / ``signed_fields(type, data, env)``: an event entry's fields;
- ``bind(name)``: bind a registry row to ``env_key(name)`` (as its first registration would);
- ``write_lease(name, at)``: a genuine lease beat at Redis time ``at``;
- ``signed_command(fields, env)``: a command's fields with the supervisor's signature.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from apps_registry import signing
from apps_registry.control import authority, keys, protocol, redis_client
from tests.support import services

# The run's supervisor key (SUPERVISOR_KEY of the test process and the cluster's supervisor:
# two registries share one Redis in the tests, and the workers pin one key).
SUPERVISOR_SEED = services.supervisor_test_environ()["SUPERVISOR_KEY"]


def env_key(name: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"test-env-key:{name}".encode()).digest())


def public(key: Ed25519PrivateKey) -> str:
    return signing.public_text(key)


def worker_key(storage_dir: str | Path, name: str) -> Ed25519PrivateKey:
    """The key a real worker generated on first start (``<storage>/identity/<env>.key``)."""
    return signing.private_key((Path(storage_dir) / "identity" / f"{name}.key").read_text())


def signed_event(message: protocol.Event, key: Ed25519PrivateKey | None = None) -> dict[str, str]:
    key = key or env_key(message.env)
    return protocol.sign_event(message, key, public(key))


def signed_fields(event_type: str, data: dict | str, env: str, key: Ed25519PrivateKey | None = None) -> dict[str, str]:
    """An event entry with arbitrary ``data`` (a dict, or a string written as is), signed as
    ``env``'s agent would: for tests of the decoding of odd but genuine data."""
    key = key or env_key(env)
    text = data if isinstance(data, str) else json.dumps(data, sort_keys=True, separators=(",", ":"))
    return {"type": event_type, "data": text, "key": public(key), "sig": signing.sign(key, event_type, env, text)}


def bind(name: str, key: Ed25519PrivateKey | None = None) -> None:
    """Bind the registry row ``name`` to ``key`` (default ``env_key(name)``)."""
    from apps_registry.models import Environment

    Environment.objects.filter(name=name).update(public_key=public(key or env_key(name)))


def write_lease(name: str, at: float, key: Ed25519PrivateKey | None = None, client=None) -> None:
    key = key or env_key(name)
    client = client or redis_client.commands()
    client.set(keys.lease(name, signing.fingerprint(public(key))), protocol.Lease(env=name, at=at).encode(key))


def lease_at(name: str, key: Ed25519PrivateKey, client=None) -> float | None:
    """The Redis time of ``name``'s last genuine lease by ``key``, or None."""
    client = client or redis_client.commands()
    lease = protocol.Lease.verified(client.get(keys.lease(name, signing.fingerprint(public(key)))), name, public(key))
    return lease.at if lease else None


def signed_command(fields: dict[str, str], env: str) -> dict[str, str]:
    return protocol.sign_command(fields, env, authority.key())
