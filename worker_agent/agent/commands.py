"""A command as the agent holds it: the decoded message (``protocol.Command``, validated there)
and the stream entry it came in, which is acknowledged (XACK) when the command is done."""

from __future__ import annotations

import dataclasses

from apps_registry.control.protocol import Command


class CommandError(Exception):
    """A command that cannot be carried out; its message goes into the acknowledgement."""


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One command read from this environment's stream."""

    entry_id: str
    command: Command
    received_at: float
