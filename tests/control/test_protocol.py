"""The protocol's messages (no Redis): each one decodes what it encodes, and decoding says what
is wrong with bad input."""

import json

import pytest

from apps_registry.control import protocol
from apps_registry.models import AppStatus

FIELDS = {
    "id": "c1",
    "action": "stop",
    "app": "crm",
    "generation": "3",
    "request_id": "r",
    "issued_at": "1.5",
    "expires_at": "99999999999",
    "drop_data": "1",
}


def test_command_decodes_fields_or_one_json_document():
    command = protocol.Command.decode(FIELDS)
    assert (command.id, command.action, command.app, command.generation, command.drop_data) == (
        "c1",
        "stop",
        "crm",
        3,
        True,
    )
    assert protocol.Command.decode({"json": json.dumps(FIELDS)}).app == "crm"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": "bad id!"}, "invalid command id"),
        ({"action": "launch"}, "unknown action"),
        ({"app": "Bad-Name"}, "invalid app name"),
        ({"app": "admin"}, "invalid app name"),
        ({"generation": "x"}, "must be numbers"),
        ({"generation": "-1"}, "must not be negative"),
        ({"drop_data": "maybe"}, "drop_data"),
    ],
)
def test_command_decoding_says_what_is_wrong(change, message):
    with pytest.raises(protocol.ProtocolError, match=message):
        protocol.Command.decode({**FIELDS, **change})
    with pytest.raises(protocol.ProtocolError, match="bad JSON"):
        protocol.Command.decode({"json": "{oops"})


def test_command_round_trip_keeps_the_wire_fields():
    command = protocol.Command.new("remove", "crm", generation=7, request_id="r9", ttl=60, drop_data=True)
    fields = command.encode()
    assert set(fields) == {
        "id",
        "action",
        "app",
        "generation",
        "request_id",
        "issued_at",
        "expires_at",
        "drop_data",
        "incarnation",
    }
    assert all(isinstance(value, str) for value in fields.values())
    assert (fields["generation"], fields["drop_data"]) == ("7", "1")
    decoded = protocol.Command.decode(fields)
    assert decoded.id == command.id and decoded.drop_data and decoded.generation == 7
    assert abs(decoded.expires_at - decoded.issued_at - 60) < 1e-3
    with pytest.raises(protocol.ProtocolError, match="unknown command action"):
        protocol.Command.new("launch", "crm", generation=1, request_id="r", ttl=1)


@pytest.mark.parametrize(
    "event",
    [
        protocol.Registration("env_a", "http://a", "", "1.0", "h", 42, ("crm", "sales"), 1.5),
        protocol.Registration("env_a", "http://a", "http://p", "1.0", "h", None, (), 2.5, heartbeat=True),
        protocol.Deregistration("env_a", 3.5),
        protocol.StatusReport("crm", "env_a", "error", "boom", 4.5),
        protocol.Ack("c1", "env_a", "ok", "", 5.5, "r1", "crm", "stop", 3, 5.0),
        protocol.Ack("entry-1-0", "env_a", "error", "bad JSON", 6.5),
    ],
)
def test_every_event_decodes_what_it_encodes(event):
    fields = event.encode()
    assert set(fields) == {"type", "data"} and fields["type"] in protocol.EVENT_TYPES
    assert protocol.decode_event(fields) == event


def test_event_data_on_the_wire():
    ack = protocol.Ack("c1", "env_a", "ok", "", 5.5, "r1", "crm", "stop", 3, 5.0)
    assert json.loads(ack.encode()["data"]) == {
        "id": "c1",
        "env": "env_a",
        "result": "ok",
        "error": "",
        "at": 5.5,
        "request_id": "r1",
        "app": "crm",
        "action": "stop",
        "generation": 3,
        "issued_at": 5.0,
    }
    assert protocol.Ack.from_json(ack.to_json()) == ack
    registration = protocol.Registration("env_a", "http://a", "", "1.0", "h", 42, ("crm",), 1.5)
    assert json.loads(registration.encode()["data"]) == {
        "env": "env_a",
        "url": "http://a",
        "proxy_url": "",
        "version": "1.0",
        "host": "h",
        "pid": 42,
        "apps_running": ["crm"],
        "at": 1.5,
    }


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "teleport", "data": "{}"}, "unknown event type"),
        ({"type": "status", "data": "{not json"}, "bad event data"),
        ({"type": "status", "data": "[1]"}, "not an object"),
        ({"type": "status", "data": json.dumps({"app": "../x", "env": "env_a", "status": "running"})}, "bad status"),
        ({"type": "status", "data": json.dumps({"app": "crm", "env": "env_a", "status": "dancing"})}, "bad status"),
        ({"type": "register", "data": json.dumps({"env": "Bad Env"})}, "invalid environment name"),
        ({"type": "heartbeat", "data": json.dumps({"env": "env_a", "apps_running": "crm"})}, "not a list"),
        ({"type": "deregister", "data": json.dumps({"env": 7})}, "invalid environment name"),
    ],
)
def test_bad_events_say_what_is_wrong(fields, message):
    with pytest.raises(protocol.ProtocolError, match=message):
        protocol.decode_event(fields)


def test_registration_decoding_bounds_and_filters_what_it_keeps():
    data = {"env": "env_a", "version": "v" * 100, "host": "h" * 300, "pid": True, "apps_running": ["b", "a", "../x"]}
    registration = protocol.Registration.decode({"type": "register", "data": json.dumps(data)})
    assert (len(registration.version), len(registration.host)) == (protocol.MAX_VERSION, protocol.MAX_HOST)
    assert registration.pid is None and registration.apps_running == ("a", "b")


@pytest.mark.parametrize(
    ("key", "url"),
    [
        ("url", "http://worker-a:15000/metrics"),
        ("url", "http://worker-a:15000/?x=1"),
        ("proxy_url", "http://worker-a:15000#/readyz"),
        ("proxy_url", "http://me:pw@worker-a:15000"),
        ("url", "ftp://worker-a"),
    ],
)
def test_a_registration_whose_url_is_not_an_origin_is_refused(key, url):
    data = {"env": "env_a", "url": "http://worker-a:15000", key: url}
    with pytest.raises(protocol.ProtocolError, match=key):
        protocol.Registration.decode({"type": "register", "data": json.dumps(data)})
    fine = {**data, key: "https://worker-a:15000/"}
    assert getattr(protocol.Registration.decode({"type": "register", "data": json.dumps(fine)}), key) == (
        "https://worker-a:15000"
    )


def test_reported_statuses_are_the_registrys():
    assert set(protocol.STATUSES) == set(AppStatus.values)


def test_every_message_carries_the_incarnation():
    incarnation = "0b0c9d5e-8a47-4c43-9f57-2d5e9a1f7c11"
    command = protocol.Command.new("start", "crm", generation=1, request_id="r", ttl=60, incarnation=incarnation)
    assert protocol.Command.decode(command.encode()).incarnation == incarnation
    assert protocol.Command.decode({**FIELDS}).incarnation == ""  # a supervisor of before: matches any
    with pytest.raises(protocol.ProtocolError, match="invalid incarnation"):
        protocol.Command.decode({**FIELDS, "incarnation": "not-a-uuid"})
    report = protocol.StatusReport("crm", "env_a", "running", at=1.0, incarnation=incarnation)
    assert protocol.StatusReport.decode(report.encode()) == report
    ack = protocol.Ack("c1", "env_a", "ok", at=1.0, app="crm", generation=1, incarnation=incarnation)
    assert protocol.Ack.from_json(ack.to_json()).incarnation == incarnation
    bad = json.dumps({"id": "c1", "env": "env_a", "result": "ok", "incarnation": "zz"})
    assert protocol.Ack.from_json(bad).incarnation is None  # lenient: the ack still counts
    assert protocol.same_incarnation("", incarnation) and not protocol.same_incarnation(incarnation, "x")


# --- signatures (docs/protocol.md, "Signed envelope") ---------------------------------------


def test_a_signature_binds_the_kind_the_environment_and_the_bytes():
    from apps_registry import signing

    key = signing.generate()
    public = signing.public_text(key)
    report = protocol.StatusReport("crm", "env_a", "running", "", 1.0)
    fields = protocol.sign_event(report, key, public)
    assert protocol.event_signed_by(fields, "env_a", public)
    assert not protocol.event_signed_by(fields, "env_b", public), "another environment's message"
    assert not protocol.event_signed_by({**fields, "type": "ack"}, "env_a", public), "another kind"
    assert not protocol.event_signed_by({**fields, "data": fields["data"].replace("running", "error")}, "env_a", public)
    assert not protocol.event_signed_by(fields, "env_a", signing.public_text(signing.generate())), "another key"
    for junk in ("", "x" * 500, "not base64!", None, 7):
        assert not protocol.event_signed_by({**fields, "sig": junk}, "env_a", public)
    command = protocol.sign_command({"id": "c", "action": "stop", "app": "crm"}, "env_a", key)
    assert protocol.command_signed_by(command, "env_a", public)
    assert not protocol.command_signed_by(command, "env_b", public)
    assert not protocol.command_signed_by({**command, "action": "remove"}, "env_a", public)


def test_a_generated_key_is_kept_private_and_reused(tmp_path):
    from apps_registry import signing

    path = tmp_path / "identity" / "env_a.key"
    first = signing.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert signing.public_text(signing.load_or_create(path)) == signing.public_text(first)
    seed = signing.seed_text(first)
    assert signing.public_text(signing.private_key(seed)) == signing.public_text(first)
