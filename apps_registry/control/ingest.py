"""Supervisor-side ingest of the workers' events (``P:events``, consumer group ``supervisor``).

Called wherever fresh state is needed (status endpoint, admin lists, API, the start job);
it never blocks. Several processes may ingest at once: the consumer group hands each entry
to one of them, and the actions it calls are safe in any order (statuses carry their time).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable

import redis
from django.conf import settings
from django.db import transaction

from apps_registry.control import identity, keys, protocol, redis_client
from apps_registry.models import Application, AuditEntry, Environment
from apps_registry.names import is_valid_name
from apps_registry.observability import metrics
from apps_registry.registry import actions
from apps_registry.registry.environments import CLOCK_TOLERANCE

log = logging.getLogger(__name__)

# Entries left pending this long by a consumer (a process that died mid-ingest) are taken over.
CLAIM_IDLE_MS = 30_000
_CLAIM_EVERY = 10.0

_group_ready: set[str] = set()
_last_claim = 0.0
_redis_down = False
_OFFSET_EVERY = 60.0
# How long the ok acknowledgements of a multi-environment request are remembered.
_offset = 0.0
_offset_measured = float("-inf")


def _group() -> str:
    return settings.APP_CONFIG.events_group


def _consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _ensure_group(client: redis.Redis, stream: str) -> None:
    if stream in _group_ready:
        return
    try:
        client.xgroup_create(stream, _group(), id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise
    _group_ready.add(stream)


def _redis_clock_offset(client: redis.Redis) -> float:
    """Seconds to add to a Redis server time to get this process's time (measured with TIME,
    refreshed every minute)."""
    global _offset, _offset_measured
    now = time.monotonic()
    if now - _offset_measured > _OFFSET_EVERY:
        before = time.time()
        seconds, micros = client.time()
        after = time.time()
        _offset = (before + after) / 2 - (seconds + micros / 1e6)
        _offset_measured = now
    return _offset


def last_clock_offset() -> float:
    """The offset last measured by ``_redis_clock_offset`` (0 before the first ingest), for
    readers of other Redis-stamped times (the lease scores) that must not pay a TIME."""
    return _offset


def _entry_seconds(entry_id: str) -> float | None:
    """When Redis appended the entry, in Redis server seconds (its id starts with the server's
    milliseconds; the sequence number as microseconds keeps entries of one millisecond in order)."""
    try:
        millis, sequence = (int(part) for part in entry_id.split("-", 1))
    except ValueError:
        return None
    return millis / 1000 + min(sequence, 999) / 1e6


def _entry_time(entry_id: str, offset: float) -> dt.datetime | None:
    """When Redis appended the entry, on this process's clock. Every worker's events are so
    ordered on one clock, the Redis server's: a worker whose clock lags the supervisor's cannot
    have its reports dropped as stale."""
    seconds = _entry_seconds(entry_id)
    try:
        return dt.datetime.fromtimestamp(seconds + offset, tz=dt.UTC) if seconds is not None else None
    except (OverflowError, OSError, ValueError):
        return None


class FutureEvent(ValueError):
    """An entry timed beyond the Redis server's clock: it would pin a heartbeat or a status."""


class OutsideAllowedNetworks(ValueError):
    """A registration whose URL or proxy URL points outside ENVIRONMENT_ALLOWED_NETWORKS."""


def _check_allowed(event: protocol.Registration) -> None:
    allowed = settings.APP_CONFIG.environment_allowed_networks
    for name, url in (("url", event.url), ("proxy_url", event.proxy_url)):
        problem = allowed.url_problem(url) if url else ""
        if problem:
            raise OutsideAllowedNetworks(f"registration of {event.env}: its {name} {problem}")


def event_seconds(entry_id: str, at: float | None, redis_now: float) -> float:
    """The entry's time in Redis server seconds, never after ``redis_now``; raises FutureEvent.

    One entry with a future id (the Redis clock jumped back after a jump ahead, or an entry
    forged with an explicit id) would otherwise pin its environment's heartbeat in the future:
    online for ever, surviving restarts. Stream ids only grow, so every entry appended after it
    inherits that future time too: such an entry is kept, timed at the server's now, only when
    the worker's own ``at`` is not in the future as well (a real agent writes its clock), and
    refused otherwise. Within the tolerance (clock noise) a time is clamped to now."""
    limit = redis_now + CLOCK_TOLERANCE.total_seconds()
    seconds = _entry_seconds(entry_id)
    if seconds is not None and seconds <= limit:
        return min(seconds, redis_now)
    if seconds is None and at is None:
        return redis_now
    if at is not None and at <= limit:
        return min(at, redis_now) if seconds is None else redis_now
    raise FutureEvent(f"entry {entry_id} is timed in the future (id {seconds}, at {at}; Redis now {redis_now:.3f})")


def _registration(event: protocol.Registration, at: dt.datetime, public_key: str) -> dict:
    """``register_environment``'s arguments from a register/heartbeat event (signed with
    ``public_key``, already checked)."""
    return {
        "public_key": public_key,
        "name": event.env,
        "url": event.url,
        "proxy_url": event.proxy_url,
        "version": event.version,
        "host": event.host,
        "pid": event.pid,
        "apps_running": list(event.apps_running),
        "at": at,
    }


def _observe_round_trip(ack: protocol.Ack, env: str) -> None:
    if ack.at is None or ack.issued_at is None:
        return
    seconds = max(0.0, ack.at - ack.issued_at)
    action = ack.action if ack.action in protocol.ACTIONS else "invalid"
    result = ack.result if ack.result in protocol.RESULTS else "error"
    metrics.observe_command_round_trip(action, env if is_valid_name(env) else "invalid", result, seconds)


def _apply_ack(ack: protocol.Ack) -> None:
    """The acknowledgement is this environment's outcome of the request; the request's entry
    is closed once every environment of it has one (requests.record_outcome)."""
    request_id = ack.request_id or ""
    env = ack.env or "?"
    _observe_round_trip(ack, env)
    if not request_id or not is_valid_name(env):
        return
    Outcome = AuditEntry.Outcome
    if ack.result == "superseded":
        actions.record_outcome(request_id, env, Outcome.SUPERSEDED, error=f"{env}: superseded by a newer request")
    elif ack.result == "expired":
        error = f"{env}: not delivered, the command expired before the worker picked it up"
        actions.record_outcome(request_id, env, Outcome.NOT_DELIVERED, error=error)
    elif ack.result != "ok":
        actions.record_outcome(request_id, env, Outcome.ERROR, error=f"{env}: {ack.error or 'failed'}")
    else:
        actions.record_outcome(request_id, env, Outcome.OK)


class Batch:
    """One ingest's events, coalesced. Registrations and heartbeats: only the newest per
    environment matters (each carries the whole description); statuses: only the newest per
    app × environment (``record_app_status`` would ignore older ones anyway); acks: every one,
    in order (each may close a request). Newest means latest by event time (the stream id)."""

    def __init__(self) -> None:
        self.registrations: dict[str, dict] = {}
        self.deregistrations: dict[str, dt.datetime] = {}
        # Keyed by app × environment × incarnation: a deleted app's late report must not hide
        # the report of the app created again under its name (``_current_statuses``).
        self.statuses: dict[tuple[str, str, str], tuple[str, str, str, str, dt.datetime]] = {}
        self.acks: list[tuple[str, protocol.Ack]] = []
        self.events = 0
        self.refused = 0
        # Identity (control.identity): keys bound by trust on first use, and refused messages
        # to note on their environments' rows.
        self.bindings: dict[str, str] = {}
        self.refusals: list[dict] = []

    def refuse(self, env: str, reason: str, detail: str, key: str = "", host: str = "") -> None:
        self.refused += 1
        identity.refused(reason, env, detail)
        if is_valid_name(env):
            self.refusals.append({"name": env, "reason": detail, "key": key, "host": host})

    def add(
        self,
        event: protocol.Event,
        fields: dict[str, str],
        entry_id: str,
        *,
        offset: float,
        redis_now: float,
        keyring: identity.Keyring,
    ) -> None:
        """Keep one decoded event if it is genuine and matters; a message not signed with its
        environment's key, or replayed, is refused (``refuse``). Raises FutureEvent for one
        timed beyond the Redis server's clock."""
        host = event.host if isinstance(event, protocol.Registration) else ""
        verdict = keyring.check(fields, event.env, host=host)
        if verdict is not None:
            self.refuse(event.env, verdict[0], verdict[1], key=verdict[2], host=host)
            return
        if isinstance(event, protocol.Registration):
            _check_allowed(event)  # before anything of it is kept
        seconds = event_seconds(entry_id, event.at, redis_now) + offset
        if identity.replayed(event.at, seconds):
            self.refuse(event.env, "stale", f"{event.type} for {event.env} signed at {event.at}: an old message copied")
            return
        at = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
        if isinstance(event, protocol.Registration):
            report = _registration(event, at, fields["key"])
            previous = self.registrations.get(report["name"])
            announce = not event.heartbeat or bool(previous and previous["announce"])
            if previous is None or previous["at"] <= at:
                self.registrations[report["name"]] = {**report, "announce": announce}
            else:
                previous["announce"] = announce
        elif isinstance(event, protocol.Deregistration):
            if event.env not in self.deregistrations or self.deregistrations[event.env] <= at:
                self.deregistrations[event.env] = at
        elif isinstance(event, protocol.StatusReport):
            report = (event.app, event.env, event.status, event.error, at)
            key = (event.app, event.env, event.incarnation)
            previous = self.statuses.get(key)
            if previous is None or previous[4] <= at:
                self.statuses[key] = report
        else:
            self.acks.append((event.id, event))
        self.events += 1

    def apply(self) -> None:
        """Apply the batch (inside the caller's transaction). Each group runs in a savepoint;
        if a bulk step fails, its items are applied one by one so one bad item drops alone."""
        if self.bindings:
            _guarded(lambda: actions.bind_environment_keys(self.bindings), "environment key bindings")
        if self.refusals:
            _guarded(lambda: actions.record_identity_refusals(self.refusals), "identity refusals")
        # An environment that deregistered in this batch: its newest registration and its
        # deregistration, in their own order (rare: an agent stopping or restarting).
        for name, gone_at in self.deregistrations.items():
            report = self.registrations.pop(name, None)
            steps: list[tuple[dt.datetime, Callable[[], object]]] = [
                (gone_at, lambda name=name, at=gone_at: actions.deregister_environment(name, at=at))
            ]
            if report is not None:
                steps.append((report["at"], lambda report=report: self._register_one(report)))
            for _at, step in sorted(steps, key=lambda item: item[0]):
                _guarded(step, f"environment {name}")
        if self.registrations:
            reports = list(self.registrations.values())
            if not _guarded(lambda: actions.refresh_environments(reports), "environment refresh", quiet=True):
                for report in reports:
                    _guarded(lambda report=report: actions.refresh_environments([report]), f"environment {report}")
        statuses = self._current_statuses() if self.statuses else []
        if statuses and not _guarded(lambda: actions.record_app_statuses(statuses), "status reports", quiet=True):
            for report in statuses:
                _guarded(lambda report=report: actions.record_app_statuses([report]), f"status {report}")
        for command_id, ack in self.acks:
            _guarded(lambda ack=ack: _apply_ack(ack), f"ack {command_id}")

    def _current_statuses(self) -> list[tuple[str, str, str, str, dt.datetime]]:
        """The newest report per app × environment among those of the app's current
        incarnation; reports of a deleted one (its name created again) are logged and dropped."""
        current = {
            name: str(incarnation)
            for name, incarnation in Application.objects.filter(
                name__in={app for app, _env, _incarnation in self.statuses}
            ).values_list("name", "incarnation")
        }
        newest: dict[tuple[str, str], tuple[str, str, str, str, dt.datetime]] = {}
        for (app, env, incarnation), report in self.statuses.items():
            if not protocol.same_incarnation(incarnation, current.get(app, "")):
                log.info(
                    "status %s of %s on %s ignored: from a deleted incarnation %s", report[2], app, env, incarnation
                )
                continue
            previous = newest.get((app, env))
            if previous is None or previous[4] <= report[4]:
                newest[(app, env)] = report
        return list(newest.values())

    @staticmethod
    def _register_one(report: dict) -> None:
        fields = {key: value for key, value in report.items() if key != "announce"}
        if not Environment.objects.filter(name=fields["name"], stopped_at__gt=fields["at"]).exists():
            actions.register_environment(**fields)


def _guarded(step: Callable[[], object], what: str, quiet: bool = False) -> bool:
    """Run one step in a savepoint; a failure rolls back that step alone and is logged."""
    try:
        with transaction.atomic():
            step()
        return True
    except Exception:
        if quiet:
            log.warning("event ingest: %s failed in bulk; applying one by one", what, exc_info=True)
        else:
            log.exception("event ingest: dropping %s", what)
        return False


def _claim_stale(client: redis.Redis, stream: str, limit: int) -> list:
    global _last_claim
    now = time.monotonic()
    if now - _last_claim < _CLAIM_EVERY:
        return []
    _last_claim = now
    reply = client.xautoclaim(stream, _group(), _consumer(), min_idle_time=CLAIM_IDLE_MS, start_id="0-0", count=limit)
    return reply[1] if reply else []


def ingest(limit: int = 1000) -> int:
    """Apply up to ``limit`` waiting events; return how many were read. Never blocks."""
    global _redis_down
    client = redis_client.commands()
    stream = keys.events_stream()
    try:
        _ensure_group(client, stream)
        offset = _redis_clock_offset(client)
        entries = list(_claim_stale(client, stream, limit))
        reply = client.xreadgroup(_group(), _consumer(), {stream: ">"}, count=max(1, limit - len(entries)))
        for _name, items in reply or []:
            entries.extend(items)
    except redis.ResponseError as error:
        if "NOGROUP" in str(error):  # the stream was deleted (Redis flushed): recreate next time
            _group_ready.discard(stream)
            return 0
        raise
    except redis.RedisError as error:
        if not _redis_down:
            log.warning("event ingest: Redis unavailable (%s); statuses may be stale", error)
            _redis_down = True
        return 0
    if _redis_down:
        log.info("event ingest: Redis reachable again")
        _redis_down = False
    apply_entries(entries, offset, redis_now=time.time() - offset)
    done = [entry_id for entry_id, _fields in entries]
    if done:
        client.xack(stream, _group(), *done)
    return len(entries)


def apply_entries(
    entries: list[tuple[str, dict[str, str] | None]], offset: float = 0.0, *, redis_now: float | None = None
) -> Batch:
    """Apply stream entries as one coalesced batch in one transaction (one commit). A bad
    event is logged and dropped, never blocks the others. ``redis_now`` is the Redis server's
    clock (default: this host's); no event is timed after it (``event_seconds``)."""
    batch = Batch()
    now = time.time() if redis_now is None else redis_now
    decoded: list[tuple[str, dict[str, str], protocol.Event]] = []
    for entry_id, fields in entries:
        if fields is None:  # trimmed away while pending
            continue
        try:
            decoded.append((entry_id, fields, protocol.decode_event(fields)))
        except Exception:
            log.exception("event ingest: dropping event %s %r", entry_id, fields)
    # One read of the keys of every environment the batch speaks for.
    keyring = identity.Keyring.load(event.env for _id, _fields, event in decoded if is_valid_name(event.env))
    for entry_id, fields, event in decoded:
        try:
            batch.add(event, fields, entry_id, offset=offset, redis_now=now, keyring=keyring)
        except FutureEvent as error:
            batch.refused += 1
            metrics.count_refused_event("future")
            log.warning("event ingest: refusing %s: %s", error, fields)
        except OutsideAllowedNetworks as error:
            batch.refused += 1
            metrics.count_refused_event("network")
            log.warning("event ingest: refusing %s", error)
        except Exception:
            log.exception("event ingest: dropping event %s %r", entry_id, fields)
    batch.bindings = keyring.new_bindings
    with transaction.atomic():
        batch.apply()
    return batch
