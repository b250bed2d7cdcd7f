"""Reading an app's figures that its workers add up in Redis (written by
``worker_agent.hosting.app_figures``; docs/protocol.md, "Per-app figures"), for the API, the
admin and the metrics.

The window is the current minute and the ``FIGURES_WINDOW_MINUTES - 1`` before it, by Redis's
clock (the one the workers file requests under); ``requests_per_minute`` divides by the time the
window has covered so far (4 minutes and the seconds of the current one), not by a round 5.
The p50 is read from the latency histogram: linear within the bucket holding the median, so
it is as precise as the buckets (``protocol.FIGURES_BOUNDS_MS``), and it says so.

What a worker wrote is untrusted: a minute's hash is used only if every field is a known one
holding a bounded non-negative integer, errors do not exceed requests and the buckets add up
to the requests (the writer adds them in one transaction); otherwise it is ignored with one
logged refusal. A database size must be a bounded integer with a sane time.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from apps_registry.control import keys, protocol, redis_client

log = logging.getLogger(__name__)

# No real minute of one app on one environment comes near this; more is a forged hash.
MAX_COUNT = 10**9
MAX_DATABASE_BYTES = 2**50  # 1 PiB
BUCKETS = len(protocol.FIGURES_BOUNDS_MS) + 1


@dataclass
class Figures:
    """One environment's figures over the window, or the app's total."""

    requests: int = 0
    errors: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    database_bytes: int | None = None
    database_measured_at: dt.datetime | None = None

    def add(self, other: Figures) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.histogram = [a + b for a, b in zip(self.histogram, other.histogram, strict=True)]

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def p50_ms(self) -> float | None:
        return percentile(self.histogram, 0.5)

    def as_json(self, window_minutes: float) -> dict:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "requests_per_minute": round(self.requests / window_minutes, 2),
            "p50_ms": None if self.p50_ms is None else round(self.p50_ms, 1),
            "error_rate": None if self.error_rate is None else round(self.error_rate, 4),
            "database_bytes": self.database_bytes,
            "database_measured_at": self.database_measured_at.isoformat() if self.database_measured_at else None,
        }


@dataclass
class AppFigures:
    window_minutes: float
    environments: dict[str, Figures]
    total: Figures

    def as_json(self) -> dict:
        return {
            "window_seconds": round(self.window_minutes * 60),
            "total": self.total.as_json(self.window_minutes),
            "environments": {env: f.as_json(self.window_minutes) for env, f in self.environments.items()},
        }


def percentile(histogram: list[int], q: float) -> float | None:
    """The ``q`` quantile in ms of a bucket histogram, linear within its bucket."""
    total = sum(histogram)
    if not total:
        return None
    rank = q * total
    seen = 0
    bounds = protocol.FIGURES_BOUNDS_MS
    for index, count in enumerate(histogram):
        if count and seen + count >= rank:
            if index == len(bounds):  # above the last bound: all we know is "at least"
                return float(bounds[-1])
            low = bounds[index - 1] if index else 0.0
            return low + (bounds[index] - low) * (rank - seen) / count
        seen += count
    return float(bounds[-1])


def _integer(value: object, maximum: int) -> int | None:
    """A non-negative decimal integer of at most ``maximum``, else None."""
    text = str(value)
    if not text.isascii() or not text.isdigit() or len(text) > len(str(maximum)):  # no sign, space, "1e3"
        return None
    number = int(text)
    return number if number <= maximum else None


def parse_minute(raw: dict) -> Figures | None:
    """One minute's hash as figures, or None if anything in it is not what a worker writes."""
    if not raw:
        return Figures()
    if len(raw) > len(protocol.FIGURES_FIELDS) or not set(raw) <= set(protocol.FIGURES_FIELDS):
        return None
    counts = {name: _integer(value, MAX_COUNT) for name, value in raw.items()}
    if None in counts.values():
        return None
    histogram = [counts.get(f"b{i}", 0) for i in range(BUCKETS)]
    requests, errors = counts.get("requests", 0), counts.get("errors", 0)
    if errors > requests or sum(histogram) != requests:
        return None
    return Figures(requests=requests, errors=errors, histogram=histogram)


def parse_database_size(raw: dict, now: float) -> tuple[int, dt.datetime] | None:
    """A ``P:dbsize`` hash as (bytes, measured at), or None if it is not what a worker writes."""
    if not raw:
        return None
    if set(raw) != {"bytes", "at"}:
        return None
    size, at = _integer(raw["bytes"], MAX_DATABASE_BYTES), _integer(raw["at"], int(now) + 60)
    if size is None or not at:
        return None
    return size, dt.datetime.fromtimestamp(at, tz=dt.UTC)


def read(app: str, environments: list[str]) -> AppFigures:
    """The app's figures on ``environments`` and in total over the window. Raises
    ``redis.RedisError`` when Redis cannot be read."""
    if not redis_client.configured():  # standalone: only workers measure, through Redis
        return AppFigures(float(protocol.FIGURES_WINDOW_MINUTES), {env: Figures() for env in environments}, Figures())
    client = redis_client.commands()
    seconds, micros = client.time()
    now = seconds + micros / 1e6
    minute = int(now // 60)
    minutes = range(minute - protocol.FIGURES_WINDOW_MINUTES + 1, minute + 1)
    window_minutes = protocol.FIGURES_WINDOW_MINUTES - 1 + (now % 60) / 60
    pipe = client.pipeline(transaction=False)
    for env in environments:
        for m in minutes:
            pipe.hgetall(keys.app_figures(app, m, env))
        pipe.hgetall(keys.app_database_size(app, env))
    replies = iter(pipe.execute())
    total = Figures()
    per_environment: dict[str, Figures] = {}
    for env in environments:
        figures = Figures()
        for m in minutes:
            parsed = parse_minute(next(replies))
            if parsed is None:
                log.warning("refused the figures of %s on %s for minute %d: not what a worker writes", app, env, m)
                continue
            figures.add(parsed)
        raw_size = next(replies)
        size = parse_database_size(raw_size, now)
        if size is None and raw_size:
            log.warning("refused the database size of %s on %s: not what a worker writes", app, env)
        if size is not None:
            figures.database_bytes, figures.database_measured_at = size
            # One database for every environment of the app: the total is the newest measurement.
            if total.database_measured_at is None or size[1] > total.database_measured_at:
                total.database_bytes, total.database_measured_at = size
        total.add(figures)
        per_environment[env] = figures
    return AppFigures(window_minutes, per_environment, total)
