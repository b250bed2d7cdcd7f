"""The app page's recent log lines and the JSON endpoint its live tail polls (real Redis; the
lines are written as a worker would, whose own writing tests/control/test_app_logs.py covers)."""

from __future__ import annotations

import pytest

from apps_registry.control import keys
from apps_registry.models import Environment
from apps_registry.registry import actions
from tests.support.users import create_user

pytestmark = pytest.mark.django_db
ENDPOINT = "/admin/app-supervisor/logs.json"


@pytest.fixture
def app(redis_conn):
    env = Environment.objects.create(name="env_a", url="http://127.0.0.1:15000")
    return actions.create_application(name="shop", environments=[env], options={"modules": ["contacts"]})


def add(redis_conn, entry_id: str, message: str, level: str = "info") -> None:
    redis_conn.xadd(keys.app_log("shop", "env_a"), {"at": "1", "level": level, "message": message}, id=entry_id)


def test_the_app_page_shows_its_lines_escaped_ready_to_tail(admin_client, app, redis_conn):
    add(redis_conn, "1000-0", "GET /x 200 3ms")
    add(redis_conn, "2000-0", '<script>alert("x")</script>', "error")
    html = admin_client.get(f"/admin/apps_registry/application/{app.pk}/change/").content.decode()
    assert "Recent log lines" in html and "GET /x 200 3ms" in html
    assert '<script>alert("x")</script>' not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert 'data-app="shop" data-environment="env_a" data-since="2000-0"' in html
    assert "apps_registry/logs.js" in html


def test_the_tail_endpoint_returns_the_lines_after_since(admin_client, app, redis_conn):
    add(redis_conn, "1000-0", "GET /x 200 3ms")
    response = admin_client.get(ENDPOINT, {"app": "shop", "environment": "env_a", "since": "0"})
    assert [line["id"] for line in response.json()["lines"]] == ["1000-0"]
    add(redis_conn, "3000-0", "GET /y 500 9ms", "error")
    response = admin_client.get(ENDPOINT, {"app": "shop", "environment": "env_a", "since": "1000-0"})
    assert [(line["id"], line["level"]) for line in response.json()["lines"]] == [("3000-0", "error")]


def test_the_tail_endpoint_refuses_bad_input_and_strangers(client, admin_client, app, redis_conn):
    assert admin_client.get(ENDPOINT, {"app": "nope", "environment": "env_a"}).status_code == 404
    response = admin_client.get(ENDPOINT, {"app": "shop", "environment": "env_zz"})
    assert (response.status_code, list(response.json()["errors"])) == (400, ["environment"])
    response = admin_client.get(ENDPOINT, {"app": "shop", "environment": "env_a", "since": "x"})
    assert (response.status_code, list(response.json()["errors"])) == (400, ["since"])
    assert client.get(ENDPOINT, {"app": "shop", "environment": "env_a"}).status_code == 403
    client.force_login(create_user("staffer"))  # staff, without view_application
    assert client.get(ENDPOINT, {"app": "shop", "environment": "env_a"}).status_code == 403
