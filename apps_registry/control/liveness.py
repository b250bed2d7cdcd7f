"""Environment status, derived from when its agent was last seen: no sweeper process.

Agents beat a lease every ``APP_LEASE_INTERVAL`` seconds: a signed ``protocol.Lease`` (the
Redis server's time of the beat) at ``P:lease:<env>:<key fingerprint>``. Only a lease signed
with the key the environment is bound to counts, and only its signed time: a lease written by
anyone else, or copied from an old one, is not a sighting. The status is computed when someone
looks:

- ``stopped``  the agent deregistered (``stopped_at``) and has not been seen since;
- ``online``   seen within 2 × lease interval;
- ``unknown``  seen within ``APP_OFFLINE_AFTER`` (a beat or two went missing);
- ``offline``  seen longer ago than that, or never.

When Redis has no entry for an environment, the database's ``last_heartbeat`` (written by
the slower registration heartbeat) is used instead. When Redis cannot be reached at all,
nothing new can be known: environments that have not deregistered are ``unknown`` (their
agents keep their apps serving; the proxy keeps routing to them) rather than declared offline
on a heartbeat that may be two minutes old. In standalone mode the one environment is this
process itself, ``online`` whenever it answers.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence

import redis
from django.conf import settings

from apps_registry import signing
from apps_registry.control import ingest, keys, protocol, redis_client
from apps_registry.models import Environment, EnvironmentStatus
from apps_registry.registry.environments import CLOCK_TOLERANCE

log = logging.getLogger(__name__)


def classify(
    last_seen: dt.datetime | None,
    stopped_at: dt.datetime | None,
    now: dt.datetime,
    *,
    lease_interval: float,
    offline_after: float,
) -> str:
    """The status of one environment from its last sighting; pure, so it is easy to test."""
    if stopped_at is not None and (last_seen is None or last_seen <= stopped_at):
        return EnvironmentStatus.STOPPED
    if last_seen is None:
        return EnvironmentStatus.OFFLINE
    age = (now - last_seen).total_seconds()
    if age <= 2 * lease_interval:
        return EnvironmentStatus.ONLINE
    if age <= offline_after:
        return EnvironmentStatus.UNKNOWN
    return EnvironmentStatus.OFFLINE


# Verified leases, by environment: (raw value, key) -> Redis time. A lease changes every beat
# but is read by every status poll in between: verifying it once per beat keeps the ~0.1 ms
# of an Ed25519 check off the admin's and the proxy's paths.
_verified: dict[str, tuple[str, str, float | None]] = {}


def _lease_time(name: str, public_key: str, raw: str | None) -> float | None:
    if raw is None:
        return None
    cached = _verified.get(name)
    if cached is not None and cached[0] == raw and cached[1] == public_key:
        return cached[2]
    lease = protocol.Lease.verified(raw, name, public_key)
    seconds = lease.at if lease is not None else None
    if len(_verified) > 10_000:
        _verified.clear()
    _verified[name] = (raw, public_key, seconds)
    return seconds


def lease_seconds(bound: dict[str, str]) -> dict[str, float] | None:
    """The Redis server time of the last genuine lease beat per environment (``bound``: name ->
    the key it is bound to), in one round trip; None if Redis cannot be reached. An environment
    with no bound key has no lease anyone can check (the database's heartbeat stands in)."""
    names = [name for name, public_key in bound.items() if public_key]
    if not names or not redis_client.configured():
        return {}
    try:
        values = redis_client.commands().mget([keys.lease(name, signing.fingerprint(bound[name])) for name in names])
    except redis.RedisError as error:
        log.warning("liveness: Redis unavailable, environment statuses unknown (%s)", error)
        return None
    found = {name: _lease_time(name, bound[name], raw) for name, raw in zip(names, values, strict=True)}
    return {name: seconds for name, seconds in found.items() if seconds is not None}


def _seen_in_redis(envs: Sequence[Environment]) -> dict[str, dt.datetime] | None:
    """Last genuine lease beat per environment, on this process's clock; None if Redis cannot
    be reached."""
    seconds = lease_seconds({env.name: env.public_key for env in envs})
    if seconds is None:
        return None
    # Leases carry the Redis server's time: moved onto this process's clock with the offset
    # ingest measured, so a Redis clock ahead of ours is not taken for a sighting in the future.
    offset = ingest.last_clock_offset()
    return {name: dt.datetime.fromtimestamp(value + offset, tz=dt.UTC) for name, value in seconds.items()}


# A Redis restarted empty (or replaced by a fresh one) has lost every lease: for OFFLINE_AFTER
# after its start a missing lease is no evidence that an environment is gone — its worker is
# re-registering — so the environment is UNKNOWN, not OFFLINE (and the proxy still tries it:
# it answered a moment ago). Asked only when a bound environment has no lease, at most once a
# second per process. A FLUSHALL without a restart is not seen (docs/operations.md).
_REDIS_START_CHECKED_EVERY = 1.0
_redis_start: tuple[float, float] | None = None  # (when asked, Redis's start on this clock)


def redis_younger_than(seconds: float) -> bool:
    """Whether the Redis holding the leases started less than ``seconds`` ago (False when unknown)."""
    global _redis_start
    now = time.time()
    if _redis_start is None or now - _redis_start[0] > _REDIS_START_CHECKED_EVERY:
        try:
            uptime = float(redis_client.commands().info("server")["uptime_in_seconds"])
        except (redis.RedisError, KeyError, TypeError, ValueError):
            return False
        _redis_start = (now, now - uptime)
    return now - _redis_start[1] < seconds


def environment_statuses(
    envs: Sequence[Environment], now: dt.datetime | None = None
) -> dict[str, tuple[str, dt.datetime | None]]:
    """``{env name: (status, last seen)}`` for these environments, with one Redis round trip."""
    config = settings.APP_CONFIG
    now = now or dt.datetime.fromtimestamp(time.time(), tz=dt.UTC)
    seen = _seen_in_redis(envs)
    result: dict[str, tuple[str, dt.datetime | None]] = {}
    for env in envs:
        if config.mode == "standalone" and env.name == config.environment_name:
            result[env.name] = (EnvironmentStatus.ONLINE, now)
            continue
        if seen is None:
            stopped = env.stopped_at is not None and (
                env.last_heartbeat is None or env.last_heartbeat <= env.stopped_at
            )
            result[env.name] = (EnvironmentStatus.STOPPED if stopped else EnvironmentStatus.UNKNOWN, env.last_heartbeat)
            continue
        # A sighting in the future (a lease score or heartbeat from a clock jump or a forged
        # write) is not evidence of life: believed, it would keep the environment online for ever.
        future = now + CLOCK_TOLERANCE
        sightings = [t for t in (seen.get(env.name), env.last_heartbeat) if t is not None and t <= future]
        last_seen = max(sightings) if sightings else None
        status = classify(
            last_seen,
            env.stopped_at,
            now,
            lease_interval=config.lease_interval,
            offline_after=config.offline_after,
        )
        if (
            status == EnvironmentStatus.OFFLINE
            and env.public_key
            and env.name not in seen
            and redis_younger_than(config.offline_after)
        ):
            status = EnvironmentStatus.UNKNOWN  # its lease may have gone with Redis's data
        result[env.name] = (status, last_seen)
    return result


def describe_age(moment: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """``"40 s ago"``, ``"3 min ago"``, ``"2 h ago"``, ``"5 d ago"`` or ``"never"``."""
    if moment is None:
        return "never"
    now = now or dt.datetime.fromtimestamp(time.time(), tz=dt.UTC)
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min ago"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"
