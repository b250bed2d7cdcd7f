"""Commands as the agent reads them from its stream: parsed and validated, never trusted."""

from __future__ import annotations

import dataclasses
import json
import time

from apps_registry.control import channel as channel
from apps_registry.names import RESERVED_APP_NAMES, is_valid_name


class CommandError(Exception):
    """A command that cannot be carried out; its message goes into the acknowledgement."""


@dataclasses.dataclass
class Command:
    entry_id: str
    id: str
    action: str
    app: str
    generation: int
    request_id: str
    issued_at: float
    expires_at: float
    drop_data: bool
    received_at: float = 0.0


def parse_command(entry_id: str, fields: dict[str, str]) -> Command:
    """Validate one stream entry; CommandError says what is wrong with it."""
    if "json" in fields:  # the whole command as one JSON document is accepted too
        try:
            data = json.loads(fields["json"])
        except (ValueError, RecursionError) as error:  # RecursionError: absurdly deep nesting
            raise CommandError(f"bad JSON: {error}") from None
        if not isinstance(data, dict):
            raise CommandError("bad JSON: not an object")
        fields = {key: value if isinstance(value, str) else json.dumps(value) for key, value in data.items()}
    command_id = fields.get("id", "")
    if not channel.COMMAND_ID_RE.match(command_id):
        raise CommandError(f"missing or invalid command id {command_id[:80]!r}")
    action = fields.get("action", "")
    if action not in channel.ACTIONS:
        raise CommandError(f"unknown action {action[:40]!r}; expected one of {', '.join(channel.ACTIONS)}")
    app = fields.get("app", "")
    if not is_valid_name(app) or app in RESERVED_APP_NAMES:
        raise CommandError(f"invalid app name {app[:60]!r}")
    try:
        generation = int(fields.get("generation", ""))
        issued_at = float(fields.get("issued_at") or time.time())
        expires_at = float(fields.get("expires_at", ""))
    except ValueError:
        raise CommandError("generation, issued_at and expires_at must be numbers") from None
    if generation < 0:
        raise CommandError("generation must not be negative")
    drop_data = fields.get("drop_data", "0").lower()
    if drop_data not in ("0", "1", "true", "false", ""):
        raise CommandError(f"drop_data must be 0 or 1 (got {drop_data[:20]!r})")
    return Command(
        entry_id=entry_id,
        id=command_id,
        action=action,
        app=app,
        generation=generation,
        request_id=str(fields.get("request_id", ""))[:64],
        issued_at=issued_at,
        expires_at=expires_at,
        drop_data=drop_data in ("1", "true"),
    )
