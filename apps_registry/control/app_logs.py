"""Reading the apps' recent log lines that workers append to ``P:log:<app>:<env>`` (written by
``worker_agent.hosting.app_logs``; docs/protocol.md, "Per-app logs"), for the API and the admin.

The lines are a worker's word, unsigned: everything read is bounded (lines per read, characters
per line), control characters are stripped again, an unknown level becomes ``info``, and the
time shown is the stream id's (Redis's clock when the line was added), not a field the line
carries. The environment of a line is the one its key names.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from apps_registry.control import keys, redis_client

LEVELS = ("info", "warning", "error")
MAX_LIMIT = 500
DEFAULT_LIMIT = 100
MAX_MESSAGE = 500
_ID_RE = re.compile(r"^\d{1,19}(-\d{1,19})?$")  # below 2**64: Redis refuses larger
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


@dataclass(frozen=True)
class Line:
    id: str
    at: dt.datetime
    environment: str
    level: str
    message: str

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "environment": self.environment,
            "level": self.level,
            "message": self.message,
        }


def valid_since(value: str) -> bool:
    """A stream id (``<ms>`` or ``<ms>-<seq>``), as the API's ``since`` takes it."""
    return bool(_ID_RE.match(value))


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _line(environment: str, entry_id: str, fields: dict) -> Line:
    level = fields.get("level") if fields.get("level") in LEVELS else "info"
    message = _CONTROL.sub(" ", str(fields.get("message", "")))[:MAX_MESSAGE]
    at = dt.datetime.fromtimestamp(_order(entry_id)[0] / 1000, tz=dt.UTC)
    return Line(entry_id, at, environment, level, message)


def read(app: str, environments: list[str], since: str = "", limit: int = DEFAULT_LIMIT) -> list[Line]:
    """The app's lines on ``environments``, merged by time, oldest first: the ``limit`` newest
    ones, or, with ``since`` (a line's id), the first ``limit`` after it (to page forward and to
    tail). Raises ``redis.RedisError`` when Redis cannot be read."""
    limit = max(1, min(limit, MAX_LIMIT))
    client = redis_client.commands()
    pipe = client.pipeline(transaction=False)
    for env in environments:
        if since:
            pipe.xrange(keys.app_log(app, env), min=f"({since}", max="+", count=limit)
        else:
            pipe.xrevrange(keys.app_log(app, env), max="+", min="-", count=limit)
    lines = [
        _line(env, entry_id, fields)
        for env, entries in zip(environments, pipe.execute(), strict=True)
        for entry_id, fields in entries
    ]
    lines.sort(key=lambda line: (_order(line.id), line.environment))
    return lines[:limit] if since else lines[-limit:]
