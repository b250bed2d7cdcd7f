"""The messages between the supervisor and the workers' agents, encoded and decoded in one
place, used by both sides (docs/protocol.md, "Command channel" and "Events").

- ``Command``: supervisor -> worker, flat string fields on ``P:cmd:<env>``;
- events, worker -> supervisor on ``P:events``, two fields ``type`` and ``data`` (one JSON
  object): ``Registration`` (``register`` and ``heartbeat``), ``Deregistration``,
  ``StatusReport`` and ``Ack`` (whose JSON also goes to ``P:ack:<command id>``).

Everything read from Redis is input: ``decode`` checks types and bounds and raises
``ProtocolError`` with a message that says what is wrong; it never trusts a field.

Every message is signed (``apps_registry.signing``; docs/security.md): an event entry
carries two more fields, ``key`` (the agent's public key) and ``sig``; a command carries
``sig`` (the supervisor's); an acknowledgement's copy on ``P:ack:<id>`` is the same envelope
as JSON; a lease is a signed JSON object of its own (``Lease``). Whether a signature is the
*right* one (the key bound to the environment) is for the receiver to decide.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import uuid
from typing import Any, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from apps_registry import signing
from apps_registry.names import RESERVED_APP_NAMES, is_valid_name
from supervisor_site.origins import origin_problem

# ``check``: a move's pre-check (does the environment reach the app's database?); changes nothing.
ACTIONS = ("start", "stop", "restart", "remove", "check")
# ``refused``: the command did not carry the supervisor's signature; nothing was done.
RESULTS = ("ok", "error", "expired", "superseded", "refused")
EVENT_TYPES = ("register", "heartbeat", "deregister", "status", "ack")
# The statuses a report may carry: the registry's AppStatus values.
STATUSES = ("stopped", "queued", "starting", "running", "stopping", "error")
AGENT_GROUP = "agent"
SUPERVISOR_GROUP = "supervisor"

# Streams are trimmed approximately: old, long-acknowledged entries go, recent ones stay.
COMMAND_STREAM_MAXLEN = 10_000
EVENTS_MAXLEN = 100_000
ACK_TTL = 600
# Processed command ids are remembered this long, so a redelivery does nothing twice.
DONE_TTL = 7 * 24 * 3600

# Command ids become Redis key parts: keep them to a harmless alphabet.
COMMAND_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,80}$")
MAX_REQUEST_ID = 64
MAX_VERSION = 60
MAX_HOST = 255


class ProtocolError(ValueError):
    """A message that does not follow the protocol; the message says what is wrong."""


def incarnation_of(value: object) -> str:
    """An app's incarnation as every message carries it: the UUID's canonical text, or ``""``
    (not given: a message of a peer that predates incarnations, which matches any)."""
    if value is None or value == "":
        return ""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ProtocolError(f"invalid incarnation {str(value)[:40]!r}") from None


def same_incarnation(a: str, b: str) -> bool:
    """True unless both are known and differ (``""`` matches any incarnation)."""
    return not a or not b or a == b


def _dumps(payload: dict[str, Any]) -> str:
    # Sorted keys: the data string is what is signed, and equal data should be equal bytes.
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str)


def _number(value: object) -> float | None:
    """A JSON number (or numeric string) as a float; None for anything else."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None


def _event_data(fields: dict[str, str], expected: tuple[str, ...]) -> dict[str, Any]:
    """The JSON object of an event entry of one of the ``expected`` types."""
    event_type = fields.get("type")
    if event_type not in expected:
        raise ProtocolError(f"unknown event type {str(event_type)[:40]!r}; expected {', '.join(expected)}")
    try:
        data = json.loads(fields.get("data") or "{}")
    except (ValueError, RecursionError) as error:  # RecursionError: absurdly deep nesting
        raise ProtocolError(f"bad event data: {error}") from None
    if not isinstance(data, dict):
        raise ProtocolError("event data is not an object")
    return data


@dataclasses.dataclass(frozen=True)
class Command:
    """One command on an environment's stream."""

    id: str
    action: str
    app: str
    generation: int
    request_id: str
    issued_at: float
    expires_at: float
    drop_data: bool = False
    # Which app of this name the command is for (Application.incarnation).
    incarnation: str = ""

    @classmethod
    def new(
        cls,
        action: str,
        app: str,
        *,
        generation: int,
        request_id: str,
        ttl: float,
        drop_data: bool = False,
        incarnation: str = "",
    ) -> Self:
        """A fresh command (new id), valid for ``ttl`` seconds from now."""
        if action not in ACTIONS:
            raise ProtocolError(f"unknown command action {action!r}")
        now = time.time()
        return cls(
            id=uuid.uuid4().hex,
            action=action,
            app=app,
            generation=int(generation),
            request_id=request_id,
            issued_at=now,
            expires_at=now + ttl,
            drop_data=drop_data,
            incarnation=incarnation_of(incarnation),
        )

    def encode(self) -> dict[str, str]:
        return {
            "id": self.id,
            "action": self.action,
            "app": self.app,
            "generation": str(self.generation),
            "request_id": self.request_id,
            "issued_at": f"{self.issued_at:.6f}",
            "expires_at": f"{self.expires_at:.6f}",
            "drop_data": "1" if self.drop_data else "0",
            "incarnation": self.incarnation,
        }

    @classmethod
    def decode(cls, fields: dict[str, str]) -> Self:
        """Flat fields, or one field ``json`` holding them as one JSON object."""
        if "json" in fields:
            try:
                data = json.loads(fields["json"])
            except (ValueError, RecursionError) as error:  # RecursionError: absurdly deep nesting
                raise ProtocolError(f"bad JSON: {error}") from None
            if not isinstance(data, dict):
                raise ProtocolError("bad JSON: not an object")
            fields = {key: value if isinstance(value, str) else json.dumps(value) for key, value in data.items()}
        command_id = fields.get("id", "")
        if not COMMAND_ID_RE.match(command_id):
            raise ProtocolError(f"missing or invalid command id {command_id[:80]!r}")
        action = fields.get("action", "")
        if action not in ACTIONS:
            raise ProtocolError(f"unknown action {action[:40]!r}; expected one of {', '.join(ACTIONS)}")
        app = fields.get("app", "")
        if not is_valid_name(app) or app in RESERVED_APP_NAMES:
            raise ProtocolError(f"invalid app name {app[:60]!r}")
        try:
            generation = int(fields.get("generation", ""))
            issued_at = float(fields.get("issued_at") or time.time())
            expires_at = float(fields.get("expires_at", ""))
        except ValueError:
            raise ProtocolError("generation, issued_at and expires_at must be numbers") from None
        if generation < 0:
            raise ProtocolError("generation must not be negative")
        drop_data = fields.get("drop_data", "0").lower()
        if drop_data not in ("0", "1", "true", "false", ""):
            raise ProtocolError(f"drop_data must be 0 or 1 (got {drop_data[:20]!r})")
        return cls(
            id=command_id,
            action=action,
            app=app,
            generation=generation,
            request_id=str(fields.get("request_id", ""))[:MAX_REQUEST_ID],
            issued_at=issued_at,
            expires_at=expires_at,
            drop_data=drop_data in ("1", "true"),
            incarnation=incarnation_of(fields.get("incarnation")),
        )


@dataclasses.dataclass(frozen=True)
class Registration:
    """``register`` (start-up, Redis back) or ``heartbeat``: the whole description of a worker."""

    env: str
    url: str
    proxy_url: str
    version: str
    host: str
    pid: int | None
    apps_running: tuple[str, ...]
    at: float | None
    heartbeat: bool = False

    @property
    def type(self) -> str:
        return "heartbeat" if self.heartbeat else "register"

    def encode(self) -> dict[str, str]:
        data = {
            "env": self.env,
            "url": self.url,
            "proxy_url": self.proxy_url,
            "version": self.version,
            "host": self.host,
            "pid": self.pid,
            "apps_running": list(self.apps_running),
            "at": self.at,
        }
        return {"type": self.type, "data": _dumps(data)}

    @classmethod
    def decode(cls, fields: dict[str, str]) -> Self:
        data = _event_data(fields, ("register", "heartbeat"))
        env = data.get("env")
        if not is_valid_name(env):
            raise ProtocolError(f"invalid environment name {str(env)[:60]!r}")
        urls = {key: str(data.get(key) or "") for key in ("url", "proxy_url")}
        for key, url in urls.items():
            # The proxy connects to these: an origin only, or a registration could point it at
            # any page of any host (supervisor_site.origins).
            problem = origin_problem(url) if url else ""
            if problem:
                raise ProtocolError(f"{key} {problem} (got {url[:100]!r})")
        pid = data.get("pid")
        apps_running = data.get("apps_running") or []
        if not isinstance(apps_running, list):
            raise ProtocolError(f"bad apps_running {str(apps_running)[:100]!r}: not a list")
        return cls(
            env=env,
            url=urls["url"].rstrip("/"),
            proxy_url=urls["proxy_url"].rstrip("/"),
            version=str(data.get("version") or "")[:MAX_VERSION],
            host=str(data.get("host") or "")[:MAX_HOST],
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) and pid >= 0 else None,
            apps_running=tuple(sorted({app for app in apps_running if is_valid_name(app)})),
            at=_number(data.get("at")),
            heartbeat=fields.get("type") == "heartbeat",
        )


@dataclasses.dataclass(frozen=True)
class Deregistration:
    """``deregister``: the worker's agent stopped cleanly."""

    env: str
    at: float | None
    type = "deregister"

    def encode(self) -> dict[str, str]:
        return {"type": self.type, "data": _dumps({"env": self.env, "at": self.at})}

    @classmethod
    def decode(cls, fields: dict[str, str]) -> Self:
        data = _event_data(fields, ("deregister",))
        env = data.get("env")
        if not is_valid_name(env):
            raise ProtocolError(f"invalid environment name {str(env)[:60]!r}")
        return cls(env=env, at=_number(data.get("at")))


@dataclasses.dataclass(frozen=True)
class StatusReport:
    """``status``: an app's status on one environment."""

    app: str
    env: str
    status: str
    error: str = ""
    at: float | None = None
    incarnation: str = ""
    type = "status"

    def encode(self) -> dict[str, str]:
        data = {"app": self.app, "env": self.env, "status": self.status, "error": self.error, "at": self.at}
        if self.incarnation:
            data["incarnation"] = self.incarnation
        return {"type": self.type, "data": _dumps(data)}

    @classmethod
    def decode(cls, fields: dict[str, str]) -> Self:
        data = _event_data(fields, ("status",))
        app, env, status = data.get("app"), data.get("env"), data.get("status")
        if not (is_valid_name(app) and is_valid_name(env)) or status not in STATUSES:
            raise ProtocolError(f"bad status event {str(data)[:200]!r}")
        return cls(
            app=app,
            env=env,
            status=status,
            error=str(data.get("error") or ""),
            at=_number(data.get("at")),
            incarnation=incarnation_of(data.get("incarnation")),
        )


@dataclasses.dataclass(frozen=True)
class Ack:
    """``ack``: how a command ended on one environment. The command's fields are echoed when
    known (``None``: not on the wire), so the supervisor can close the request and time it.

    Decoding is lenient on purpose: an acknowledgement with an unknown result or a bad
    environment still reaches the supervisor, which counts it and closes its request as an
    error instead of leaving it pending."""

    id: str
    env: str
    result: str
    error: str = ""
    at: float | None = None
    request_id: str | None = None
    app: str | None = None
    action: str | None = None
    generation: int | None = None
    issued_at: float | None = None
    incarnation: str | None = None
    type = "ack"

    def data(self) -> dict[str, Any]:
        """The JSON object (also the value pushed to ``P:ack:<id>``)."""
        data: dict[str, Any] = {"id": self.id, "env": self.env, "result": self.result, "error": self.error}
        data["at"] = self.at
        for name in ("request_id", "app", "action", "generation", "issued_at", "incarnation"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        return data

    def to_json(self) -> str:
        return _dumps(self.data())

    def encode(self) -> dict[str, str]:
        return {"type": self.type, "data": self.to_json()}

    @classmethod
    def decode(cls, fields: dict[str, str]) -> Self:
        return cls._from_data(_event_data(fields, ("ack",)))

    @classmethod
    def from_json(cls, raw: str) -> Self:
        """An acknowledgement as pushed to ``P:ack:<id>``."""
        return cls.decode({"type": "ack", "data": raw})

    @classmethod
    def _from_data(cls, data: dict[str, Any]) -> Self:
        def text(name: str, bound: int | None = None) -> str | None:
            value = data.get(name)
            return None if value is None else str(value)[:bound]

        generation = data.get("generation")
        try:  # lenient, as the rest: a bad incarnation is dropped, the ack still counts
            incarnation = incarnation_of(data.get("incarnation")) if data.get("incarnation") is not None else None
        except ProtocolError:
            incarnation = None
        return cls(
            id=text("id") or "",
            env=text("env") or "",
            result=text("result") or "",
            error=text("error") or "",
            at=_number(data.get("at")),
            request_id=text("request_id", MAX_REQUEST_ID),
            app=text("app"),
            action=text("action"),
            generation=generation if isinstance(generation, int) and not isinstance(generation, bool) else None,
            issued_at=_number(data.get("issued_at")),
            incarnation=incarnation,
        )


Event = Registration | Deregistration | StatusReport | Ack

_DECODERS: dict[str, type[Registration | Deregistration | StatusReport | Ack]] = {
    "register": Registration,
    "heartbeat": Registration,
    "deregister": Deregistration,
    "status": StatusReport,
    "ack": Ack,
}


def decode_event(fields: dict[str, str]) -> Event:
    """Any event entry of ``P:events``; ProtocolError for an unknown type or bad data."""
    decoder = _DECODERS.get(str(fields.get("type")))
    if decoder is None:
        raise ProtocolError(f"unknown event type {str(fields.get('type'))[:40]!r}")
    return decoder.decode(fields)


# --- signed envelopes ---------------------------------------------------------------------------


def sign_event(message: Event, key: Ed25519PrivateKey, public: str) -> dict[str, str]:
    """The stream fields of an event, signed: ``type``, ``data``, ``key`` (the signer's public
    key, so the first registration can bind it) and ``sig`` over the type, the environment and
    the data exactly as written."""
    fields = message.encode()
    fields["key"] = public
    fields["sig"] = signing.sign(key, fields["type"], message.env, fields["data"])
    return fields


def event_signed_by(fields: dict[str, str], env: str, public: str) -> bool:
    """True if the event entry's ``sig`` is ``public``'s signature of its type, ``env`` and data."""
    return signing.verify(public, str(fields.get("type")), env, str(fields.get("data") or ""), fields.get("sig"))


def signed_ack_json(fields: dict[str, str]) -> str:
    """The value pushed to ``P:ack:<id>``: the signed ack event's fields as one JSON object."""
    return _dumps({name: fields[name] for name in ("type", "data", "key", "sig")})


def signed_ack_fields(raw: str) -> dict[str, str]:
    """The fields of a ``P:ack:<id>`` value (``signed_ack_json``); ProtocolError if it is not one."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError, TypeError) as error:
        raise ProtocolError(f"bad acknowledgement: {error}") from None
    if not isinstance(value, dict) or not all(isinstance(value.get(name), str) for name in ("data", "key", "sig")):
        raise ProtocolError("bad acknowledgement: not a signed envelope")
    return {"type": "ack", "data": value["data"], "key": value["key"], "sig": value["sig"]}


def command_body(fields: dict[str, str]) -> str:
    """What a command's signature covers: its ``json`` field as written, or the sorted-key JSON
    of its flat fields without ``sig``."""
    if "json" in fields:
        return str(fields["json"])
    return signing.canonical({name: value for name, value in fields.items() if name != "sig"})


def sign_command(fields: dict[str, str], env: str, key: Ed25519PrivateKey) -> dict[str, str]:
    """A command's stream fields with the supervisor's signature for the environment ``env``
    (a command copied onto another environment's stream does not verify there)."""
    return {**fields, "sig": signing.sign(key, "command", env, command_body(fields))}


def command_signed_by(fields: dict[str, str], env: str, public: str) -> bool:
    return signing.verify(public, "command", env, command_body(fields), fields.get("sig"))


@dataclasses.dataclass(frozen=True)
class Lease:
    """A lease beat: the environment and the Redis server's time of the beat, signed. Stored
    at ``P:lease:<env>:<fingerprint>``; liveness believes it only with the bound key's
    signature, and only its signed time (so a copy of an old lease is an old sighting)."""

    env: str
    at: float

    def body(self) -> str:
        return signing.canonical({"at": f"{self.at:.6f}", "env": self.env})

    def encode(self, key: Ed25519PrivateKey) -> str:
        return _dumps(
            {"at": f"{self.at:.6f}", "env": self.env, "sig": signing.sign(key, "lease", self.env, self.body())}
        )

    @classmethod
    def verified(cls, raw: str | bytes | None, env: str, public: str) -> Self | None:
        """The lease in ``raw`` if it is ``env``'s, signed by ``public``; None otherwise."""
        if not raw or not public:
            return None
        try:
            value = json.loads(raw)
            lease = cls(env=str(value["env"]), at=float(value["at"]))
        except (ValueError, TypeError, KeyError, RecursionError):
            return None
        if lease.env != env or not signing.verify(public, "lease", env, lease.body(), value.get("sig")):
            return None
        return lease


# --- per-app figures (P:fig:<app>:<minute>:<env>, P:dbsize:<app>:<env>) ------------------------
# Not messages but counters, unsigned: the supervisor bounds and checks what it reads
# (apps_registry.control.app_figures). The latency histogram's bucket upper bounds in
# milliseconds; field ``b<i>`` counts requests of at most ``FIGURES_BOUNDS_MS[i]`` (and above
# the previous bound), the last field ``b<len(FIGURES_BOUNDS_MS)>`` those above the last bound.
FIGURES_BOUNDS_MS = (
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000, 1500, 2000, 3000, 5000, 10000, 30000,
)  # fmt: skip
FIGURES_FIELDS = ("requests", "errors", *(f"b{i}" for i in range(len(FIGURES_BOUNDS_MS) + 1)))
# A minute's hash outlives the supervisor's five-minute window by a margin, then expires.
FIGURES_TTL = 15 * 60
# A database size stays readable this long after its last measurement.
DATABASE_SIZE_TTL = 3600
FIGURES_WINDOW_MINUTES = 5


def latency_bucket(elapsed_ms: float) -> int:
    """The histogram field index of one request's duration."""
    for index, bound in enumerate(FIGURES_BOUNDS_MS):
        if elapsed_ms <= bound:
            return index
    return len(FIGURES_BOUNDS_MS)
