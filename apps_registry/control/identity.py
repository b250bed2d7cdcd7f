"""Which workers' messages are genuine: signed with the key their environment is bound to
(docs/security.md, "Identity").

- A message with no signature, or one its own key does not verify, is refused.
- The first signed message of a name binds the name to its key (trust on first use): a new
  name through its registration (``register_environment``), a row from before identities
  through ``bind_environment_keys``.
- A validly signed message from another key than the bound one is a conflicting claim:
  refused, and noted on the environment's row for the admin and, rate-limited, the audit
  (``record_identity_refusals``); the operator may re-bind the name to that key.
- A genuine message whose signed time is further than REPLAY_WINDOW from when Redis appended
  it is an old message copied again: refused.

Every refusal is counted in ``appsup_events_refused_total{reason=…}`` and logged at most once a
minute per environment and reason. Verifying costs ~0.1 ms; keys are read once per ingest
batch (``Keyring``) and parsed once per process (``signing.public_key``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from apps_registry import signing
from apps_registry.control import protocol
from apps_registry.models import Environment
from apps_registry.names import is_valid_name
from apps_registry.observability import metrics

log = logging.getLogger(__name__)

# How far a signed message's own time may be from when Redis appended it: clock differences
# between hosts and an agent's retries while Redis was away fit in it; a copy of an older
# message does not.
REPLAY_WINDOW = 300.0
_LOG_EVERY = 60.0
# Bound keys are remembered this long per process, so an ingest of a few events does not pay
# a query for them (~0.7 ms, more than the verifications). A message signed with another key
# is checked against the registry again before it is refused, so a re-bind in another process
# takes effect at once for the new key; the old key's messages may be believed for this long.
BOUND_KEY_SECONDS = 2.0

_logged: dict[tuple[str, str], tuple[float, int]] = {}
_log_lock = threading.Lock()
_bound_keys: dict[str, tuple[str, float]] = {}


def refused(reason: str, env: str, detail: str) -> None:
    """Count a refused message, and log it unless this environment and reason were logged in
    the last minute (then the next line says how many were refused meanwhile)."""
    metrics.count_refused_event(reason)
    now = time.monotonic()
    key = (env if len(env) <= 40 else env[:40], reason)
    with _log_lock:
        last, skipped = _logged.get(key, (float("-inf"), 0))
        if now - last < _LOG_EVERY:
            _logged[key] = (last, skipped + 1)
            return
        _logged[key] = (now, 0)
        if len(_logged) > 10_000:  # forged names must not grow this for ever
            _logged.clear()
    more = f" ({skipped} more refused in the last minute)" if skipped else ""
    log.warning("refusing worker message: %s%s", detail[:500], more)


class Keyring:
    """The keys some environments are bound to, read in one query, and the bindings made by
    trust on first use while checking one batch."""

    def __init__(self, bound: dict[str, str]) -> None:
        # name -> bound key; "" for a row without one (from before identities); absent: no row.
        self.bound = bound
        # Rows without a key bound by this batch: name -> key.
        self.new_bindings: dict[str, str] = {}

    @classmethod
    def load(cls, names: Iterable[str]) -> Keyring:
        """The bound keys of these environments: remembered ones (BOUND_KEY_SECONDS), the rest
        in one query."""
        wanted = set(names)
        now = time.monotonic()
        bound = {}
        for name in wanted:
            cached = _bound_keys.get(name)
            if cached is not None and now - cached[1] < BOUND_KEY_SECONDS:
                bound[name] = cached[0]
        missing = wanted - bound.keys()
        if missing:
            bound.update(_read(missing, now))
        return cls(bound)

    def check(self, fields: dict[str, str], env: str, *, host: str = "") -> tuple[str, str, str] | None:
        """None if the entry is ``env``'s genuine message; otherwise ``(reason, detail, key)``
        with the key it was signed with ("" if none verified)."""
        kind = str(fields.get("type"))
        carried = fields.get("key") or ""
        if not is_valid_name(env):
            return "unsigned", f"{kind} for an invalid environment name {env[:60]!r}", ""
        if not fields.get("sig") or not carried:
            return "unsigned", f"unsigned {kind} for {env}", ""
        if not signing.valid_public_text(carried) or not protocol.event_signed_by(fields, env, carried):
            return "bad_signature", f"{kind} for {env} with a signature that does not verify", ""
        bound = self.bound.get(env)
        if bound and bound != carried:
            # Perhaps re-bound since it was remembered: the registry has the last word.
            bound = self.bound[env] = _read({env}, time.monotonic()).get(env, "")
        if bound:
            if bound == carried:
                return None
            where = f" from host {host}" if host else ""
            return (
                "conflict",
                f"conflicting {_noun(kind)} for {env}{where} (key {signing.fingerprint(carried)}; "
                f"{env} is bound to key {signing.fingerprint(bound)})",
                carried,
            )
        # Trust on first use. A name with no row is bound by its registration; its other
        # messages are believed meanwhile (nothing of it exists to be changed by them).
        if bound == "":
            self.new_bindings[env] = carried
        self.bound[env] = carried
        return None


def _read(names: set[str], now: float) -> dict[str, str]:
    found = dict(Environment.objects.filter(name__in=list(names)).values_list("name", "public_key"))
    if len(_bound_keys) > 10_000:  # forged names are never remembered, but be safe
        _bound_keys.clear()
    for name, public_key in found.items():
        if public_key:  # only bindings: an unbound name is read again next time
            _bound_keys[name] = (public_key, now)
    return found


def forget(name: str) -> None:
    """Drop the remembered key of an environment (its binding changed in this process)."""
    _bound_keys.pop(name, None)


def _noun(kind: str) -> str:
    # A heartbeat is a registration repeated (the whole description): named alike.
    return {"register": "registration", "heartbeat": "registration", "ack": "acknowledgement"}.get(kind, kind)


def replayed(at: float | None, appended: float) -> bool:
    """True if a genuine message's own time is outside REPLAY_WINDOW of when it was appended
    (both on the supervisor's clock): a copy of an old message."""
    return at is None or abs(at - appended) > REPLAY_WINDOW


def ack_is_genuine(fields: dict[str, str], env: str) -> bool:
    """An acknowledgement read from ``P:ack:<id>``, checked as ingest checks events."""
    keyring = Keyring.load([env])
    if env in keyring.bound and not keyring.bound[env]:
        del keyring.bound[env]  # a row without a key: trust on first use, as at ingest
    verdict = keyring.check(fields, env)
    if verdict is not None:
        refused(verdict[0], env, f"acknowledgement list entry: {verdict[1]}")
        return False
    try:
        data = protocol.Ack.decode(fields)
    except protocol.ProtocolError:
        return False
    if replayed(data.at, time.time()):
        refused("stale", env, f"acknowledgement {data.id} from {env} signed at {data.at}: an old message")
        return False
    return True
