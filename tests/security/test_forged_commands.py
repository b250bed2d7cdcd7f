"""Malformed and forged command messages XADDed straight into a real worker's command stream
(tests/support/cluster.py). Forged ones (not signed by the supervisor) are acknowledged
``refused`` under their entry's id and never carried out; malformed ones that do carry the
supervisor's signature are acknowledged as errors. The agent keeps serving, and still carries
out the ordinary commands that arrive with and after them."""

from __future__ import annotations

import json
import time

import pytest
import redis

from apps_registry.control import channel, keys, protocol, redis_client
from tests.support import identity, services
from tests.support.processes import wait_until

# The acknowledgements are checked against the registry's bound keys.
pytestmark = [pytest.mark.cluster, pytest.mark.django_db]


def _base(command_id: str, **fields: str) -> dict[str, str]:
    now = time.time()
    return {
        "id": command_id,
        "action": "stop",
        "app": "ghost_app",
        "generation": "1",
        "request_id": "forged",
        "issued_at": f"{now:.3f}",
        "expires_at": f"{now + 60:.3f}",
        **fields,
    }


def forged() -> dict[str, tuple[dict[str, str], str]]:
    """command id → (fields, a phrase the error acknowledgement must contain); built when the
    test runs, so that the timestamps are fresh (a command past expires_at is acked 'expired')."""
    return {
        "f-deep": ({"json": "[" * 50_000}, "bad JSON"),
        "f-deep-obj": ({"json": '{"a":' * 50_000 + "1" + "}" * 50_000}, "bad JSON"),
        "f-inject": (_base("f-inject", app="crm:*"), "invalid app name"),
        "f-path": (_base("f-path", app="../../etc/passwd"), "invalid app name"),
        "f-reserved": (_base("f-reserved", app="postgres"), "invalid app name"),
        "f-long": (_base("f-long", app="a" * 100_000), "invalid app name"),
        "f-unicode": (_base("f-unicode", app="crmé"), "invalid app name"),
        "f-action": (_base("f-action", action="eval"), "unknown action"),
        "f-gen-neg": (_base("f-gen-neg", generation="-1"), "negative"),
        "f-gen-huge": (_base("f-gen-huge", generation="9" * 5000), "must be numbers"),
        "f-gen-float": (_base("f-gen-float", generation="1.5"), "must be numbers"),
        "f-expiry": (_base("f-expiry", expires_at="soon"), "must be numbers"),
        "f-drop": (_base("f-drop", drop_data="yes please"), "drop_data"),
        "f-ghost": (_base("f-ghost"), "unknown app"),
    }


# Ids that cannot be used as a key part: acknowledged under the stream entry's id instead.
BAD_IDS = ["x:*", "../../ack", "a b", "i" * 200, ""]


def test_forged_and_malformed_commands_are_acked_as_errors_and_the_agent_survives(cluster_logs):
    worker = cluster_logs.env_a
    client = redis_client.commands()
    stream = keys.command_stream("env_a")
    raw = redis.Redis(host=services.REDIS_HOST, port=services.REDIS_PORT, db=services.REDIS_DB)

    log_start = len(worker.agent.log())
    cases = forged()
    entries: dict[str, str] = {}
    unsigned: dict[str, str] = {}
    for command_id, (fields, _phrase) in cases.items():
        # Signed by the supervisor but malformed: refused by validation, with the reason.
        entries[command_id] = client.xadd(stream, identity.signed_command(fields, "env_a"))
        # The same without the signature: refused before it is even decoded.
        unsigned[command_id] = client.xadd(stream, fields)
    for bad_id in BAD_IDS:
        entries[f"bad-id {bad_id[:10]!r}"] = client.xadd(stream, identity.signed_command(_base(bad_id), "env_a"))
    # Bytes that are not UTF-8, in the value and in the field name.
    entries["binary"] = raw.xadd(stream, {b"id": b"\xff\xfe\x00bin", b"action": b"\xc3\x28", b"\xfa": b"\xfb"}).decode()
    # An ordinary command sent right behind the junk (same batch) is still carried out.
    valid_id = channel.send_command("env_a", "stop", "ghost_after", generation=1, request_id="after")

    for command_id, (_fields, phrase) in cases.items():
        key = command_id if command_id not in ("f-deep", "f-deep-obj") else f"entry-{entries[command_id]}"
        ack = channel.wait_for_ack(key, 15)
        assert ack is not None, f"no acknowledgement for {command_id}\n{worker.agent.log()[-3000:]}"
        assert ack["result"] == "error" and phrase in ack["error"], (command_id, ack)
        assert len(json.dumps(ack)) < 20_000, f"{command_id}: acknowledgement echoes the whole input"
    for label, entry_id in entries.items():
        if label.startswith("bad-id") or label == "binary":
            ack = channel.wait_for_ack(f"entry-{entry_id}", 15)
            expected = "refused" if label == "binary" else "error"  # binary junk carries no signature
            assert ack is not None and ack["result"] == expected, (label, ack)
    ack = channel.wait_for_ack(valid_id, 15)
    assert ack is not None and ack["result"] == "error" and "unknown app" in ack["error"], ack
    for command_id, entry_id in unsigned.items():
        ack = channel.wait_for_ack(f"entry-{entry_id}", 15)
        assert ack is not None and ack["result"] == "refused", (command_id, ack)
        assert "request_id" not in ack and "app" not in ack, "a refused command echoes nothing"

    # Nothing left pending in the agent's group: every entry was acknowledged.
    wait_until(
        lambda: client.xpending(stream, protocol.AGENT_GROUP)["pending"] == 0,
        timeout=10,
        message="no pending command entries",
    )
    # No key was written outside the run's prefix, and no ack key outside the ack namespace.
    ack_prefix = keys.ack("")
    stray = [k for k in client.scan_iter(match=f"{services.RUN_ID}:ack:*") if not k.startswith(ack_prefix)]
    assert stray == []
    assert worker.agent.alive(), worker.agent.log()[-3000:]
    log = worker.agent.log()[log_start:]
    assert "malformed command" in log and "Traceback" not in log, log[-4000:]
    # Refusals are logged once, not once per entry.
    assert log.count("refusing command entry") == 1, log[-4000:]
    # Still registered and answering commands.
    worker.wait_registered(timeout=10)
    after = channel.send_command("env_a", "stop", "ghost_later", generation=1, request_id="later")
    assert channel.wait_for_ack(after, 15)["result"] == "error"
