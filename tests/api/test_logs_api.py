"""``GET /api/v1/apps/<name>/logs`` against real Redis streams (written here as a worker would:
the worker's own writing is tested with real processes in tests/hosting/test_app_logs.py)."""

from __future__ import annotations

import pytest
from django.test import Client

from apps_registry.control import keys
from apps_registry.models import ApiToken, Environment
from apps_registry.registry import actions
from tests.support import schema_check
from tests.support.api import ApiClient
from tests.support.users import create_user

pytestmark = pytest.mark.django_db
TEMPLATE = "/apps/{name}/logs"


@pytest.fixture
def document():
    return Client().get("/api/v1/openapi.json").json()


@pytest.fixture
def api(document):
    _token, raw = ApiToken.issue(create_user("logroot", superuser=True))
    return ApiClient(raw, document=document)


@pytest.fixture
def app(redis_conn):
    envs = [
        Environment.objects.create(name="env_a", url="http://127.0.0.1:15000"),
        Environment.objects.create(name="env_b", url="http://127.0.0.1:16000"),
    ]
    Environment.objects.create(name="env_c", url="http://127.0.0.1:17000")
    return actions.create_application(name="shop", environments=envs, options={"modules": ["contacts"]})


def add(redis_conn, env: str, entry_id: str, message: str, level: str = "info") -> str:
    return redis_conn.xadd(keys.app_log("shop", env), {"at": "1", "level": level, "message": message}, id=entry_id)


def test_lines_of_every_environment_merge_by_time_and_page_with_since(api, app, redis_conn):
    add(redis_conn, "env_a", "1000-0", "GET / 200 3ms")
    add(redis_conn, "env_b", "1500-0", "GET /x 500 9ms", "error")
    add(redis_conn, "env_a", "2000-0", "GET /y 404 1ms", "warning")
    status, body = api.call("GET", "/api/v1/apps/shop/logs", TEMPLATE)
    assert status == 200
    assert [(line["id"], line["environment"], line["level"]) for line in body["lines"]] == [
        ("1000-0", "env_a", "info"),
        ("1500-0", "env_b", "error"),
        ("2000-0", "env_a", "warning"),
    ]
    assert body["lines"][0]["at"] == "1970-01-01T00:00:01+00:00"  # the stream id's time, not the line's
    # Paging forward: the lines after an id, at most limit of them.
    status, body = api.call("GET", "/api/v1/apps/shop/logs?since=1000-0&limit=1", TEMPLATE)
    assert [line["id"] for line in body["lines"]] == ["1500-0"]
    status, body = api.call("GET", "/api/v1/apps/shop/logs?since=2000-0", TEMPLATE)
    assert body == {"lines": []}
    # One environment; without since, the newest limit lines.
    status, body = api.call("GET", "/api/v1/apps/shop/logs?environment=env_a&limit=1", TEMPLATE)
    assert [line["id"] for line in body["lines"]] == ["2000-0"]


def test_lines_are_untrusted_text_bounded_and_cleaned(api, app, redis_conn):
    add(redis_conn, "env_a", "1000-0", "evil\x1b[31m\r\nforged line <script>" + "x" * 2000, "root")
    _status, body = api.call("GET", "/api/v1/apps/shop/logs", TEMPLATE)
    (line,) = body["lines"]
    assert line["level"] == "info"  # an unknown level is not passed on
    assert line["message"].startswith("evil [31m forged line <script>")
    assert len(line["message"]) == 500


def test_bad_input_is_a_clear_4xx(api, app, redis_conn):
    assert api.call("GET", "/api/v1/apps/nope/logs", TEMPLATE)[0] == 404
    status, body = api.call("GET", "/api/v1/apps/shop/logs?environment=env_zz", TEMPLATE)
    assert (status, list(body["errors"])) == (400, ["environment"])
    for since in ("abc", "1-2-3", "9" * 30, "(5"):
        status, body = api.call("GET", f"/api/v1/apps/shop/logs?since={since}", TEMPLATE)
        assert (status, list(body["errors"])) == (400, ["since"]), since
    for limit in ("0", "501", "x"):
        assert api.call("GET", f"/api/v1/apps/shop/logs?limit={limit}", TEMPLATE)[0] == 400, limit
    # An environment the app does not run on is known: its (absent) lines, no error.
    assert api.call("GET", "/api/v1/apps/shop/logs?environment=env_c", TEMPLATE) == (200, {"lines": []})


def test_reading_logs_needs_view_application(document, app):
    _token, raw = ApiToken.issue(create_user("nobody"))
    status, body = ApiClient(raw, document=document).call("GET", "/api/v1/apps/shop/logs", TEMPLATE)
    assert status == 403
    assert not schema_check.response_errors(document, TEMPLATE, "GET", status, body)
