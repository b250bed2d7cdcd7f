"""The /api/v1/ contract, in process: authentication, permissions, validation, status codes,
the audit trail, and every response checked against the served OpenAPI document."""

from __future__ import annotations

import dataclasses
import io
import re

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from apps_registry.api.body import MAX_BODY_BYTES
from apps_registry.control.start_queue import enqueue
from apps_registry.models import (
    ApiToken,
    AppEnvironment,
    Application,
    AppStatus,
    AuditEntry,
    Environment,
    EnvironmentStatus,
    StartMode,
)
from apps_registry.registry import actions, outbox
from supervisor_site import catalogue
from tests.support import schema_check
from tests.support.api import ApiClient
from tests.support.processes import free_port
from tests.support.users import PASSWORD, create_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def envs():
    return [
        Environment.objects.create(name="env_a", url="http://127.0.0.1:15000"),
        Environment.objects.create(name="env_b", url="http://127.0.0.1:16000", version="1.2"),
    ]


@pytest.fixture
def document():
    response = Client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    return response.json()


@pytest.fixture
def admin_api(document):
    _token, raw = ApiToken.issue(create_user("root", superuser=True))
    return ApiClient(raw, document=document)


def _app(name: str, envs, **options) -> Application:
    return actions.create_application(name=name, environments=envs, options=options or {"modules": ["contacts"]})


def test_requests_without_a_valid_token_get_401(document, envs):
    user = create_user("someone", superuser=True)
    token, raw = ApiToken.issue(user)
    for header in ("", "Token abc", "Bearer ", "Bearer not-a-token"):
        client = Client(HTTP_AUTHORIZATION=header) if header else Client()
        response = client.get("/api/v1/apps")
        assert response.status_code == 401, header
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert not schema_check.response_errors(document, "/apps", "GET", 401, response.json())
    assert Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get("/api/v1/apps").status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    assert Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get("/api/v1/apps").status_code == 401
    token2, raw2 = ApiToken.issue(user)
    User.objects.filter(pk=user.pk).update(is_active=False)
    assert Client(HTTP_AUTHORIZATION=f"Bearer {raw2}").get("/api/v1/apps").status_code == 401
    # Only the hash is stored.
    assert not ApiToken.objects.filter(token_hash=raw2).exists()
    assert ApiToken.objects.get(pk=token2.pk).token_hash == ApiToken.hash(raw2)


def test_list_and_read_apps_and_environments(admin_api, envs):
    _app("shop", envs)
    _app("crm", envs[:1], modules=["tasks"], start_mode="on_first_visit")
    status, body = admin_api.call("GET", "/api/v1/apps", "/apps")
    assert status == 200
    assert [a["name"] for a in body["apps"]] == ["crm", "shop"]
    shop = body["apps"][1]
    assert shop["environments"] == ["env_a", "env_b"]
    assert shop["statuses"] == {"env_a": "stopped", "env_b": "stopped"}
    status, crm = admin_api.call("GET", "/api/v1/apps/crm", "/apps/{name}")
    assert status == 200 and crm["modules"] == ["tasks"] and crm["start_mode"] == "on_first_visit"
    for missing in ("nope", "Bad-Name", "a" * 300):
        status, body = admin_api.call("GET", f"/api/v1/apps/{missing}", "/apps/{name}")
        assert status == 404 and "error" in body
    status, body = admin_api.call("GET", "/api/v1/environments", "/environments")
    assert status == 200
    assert [e["name"] for e in body["environments"]] == ["env_a", "env_b"]
    assert body["environments"][1]["version"] == "1.2"


def test_create_app_201_then_duplicate_409(admin_api, envs):
    status, body = admin_api.call(
        "POST",
        "/api/v1/apps",
        "/apps",
        {"name": "shop", "display_name": "Shop", "environments": ["env_b", "env_a"], "modules": ["contacts"]},
    )
    assert status == 201, body
    assert body["name"] == "shop" and sorted(body["environments"]) == ["env_a", "env_b"]
    assert body["initial_admin"]["username"] == "admin" and body["initial_admin"]["password"]
    app = Application.objects.get(name="shop")
    assert app.options["initial_admin"]["password_hash"] != body["initial_admin"]["password"]
    assert AuditEntry.objects.filter(app_name="shop", action="create", via="api", user__username="root").exists()
    status, body = admin_api.call("POST", "/api/v1/apps", "/apps", {"name": "shop", "environments": ["env_a"]})
    assert status == 409 and "already exists" in body["error"]


def test_create_with_start_queues_a_start(admin_api, envs, django_capture_on_commit_callbacks, redis_conn):
    with django_capture_on_commit_callbacks(execute=True):
        status, body = admin_api.call(
            "POST",
            "/api/v1/apps",
            "/apps",
            {"name": "quick", "environments": ["env_a"], "start": True, "admin_password": "s3cret-pass"},
        )
    assert status == 201 and body["request_id"] and "initial_admin" not in body
    assert body["statuses"] == {"env_a": "queued"}
    quick = Application.objects.get(name="quick")
    assert enqueue.job_id("quick", quick.generation, 0, str(quick.incarnation)) in enqueue.get_queue().get_job_ids()
    assert enqueue.queue_positions()["quick"] >= 1
    assert AuditEntry.objects.get(request_id=body["request_id"]).result == "pending"
    enqueue.get_queue().empty()  # the app exists only in this test's transaction


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"name", "environments"}),
        ({"name": "Bad Name", "environments": ["env_a"]}, {"name"}),
        ({"name": "admin", "environments": ["env_a"]}, {"name"}),
        ({"name": 42, "environments": "env_a"}, {"name", "environments"}),
        ({"name": "ok", "environments": []}, {"environments"}),
        ({"name": "ok", "environments": ["env_z"]}, {"environments"}),
        ({"name": "ok", "environments": ["env_a", "env_a"]}, {"environments"}),
        ({"name": "ok", "environments": ["env_a"], "modules": ["payroll"]}, {"modules"}),
        ({"name": "ok", "environments": ["env_a"], "modules": "contacts"}, {"modules"}),
        ({"name": "ok", "environments": ["env_a"], "start": "yes"}, {"start"}),
        ({"name": "ok", "environments": ["env_a"], "start": 1}, {"start"}),
        ({"name": "ok", "environments": ["env_a"], "start_mode": "always"}, {"start_mode"}),
        ({"name": "ok", "environments": ["env_a"], "display_name": ["x"]}, {"display_name"}),
        ({"name": "ok", "environments": ["env_a"], "colour": "red"}, {"colour"}),
        ({"name": "ok", "environments": ["env_a"], "admin_password": ""}, {"admin_password"}),
    ],
)
def test_create_rejects_bad_input_with_400_per_field(admin_api, envs, body, fields):
    status, payload = admin_api.call("POST", "/api/v1/apps", "/apps", body)
    assert status == 400
    assert set(payload["errors"]) == fields, payload
    assert not Application.objects.exists()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (b'"a string"', 400),
        (b"\xff\xfe\x00", 400),
        (b'{"name": "x", "pad": "' + b"a" * (MAX_BODY_BYTES + 10) + b'"}', 413),
    ],
)
def test_bad_bodies_get_4xx_never_500(admin_api, envs, raw, status):
    got, payload = admin_api.call("POST", "/api/v1/apps", "/apps", raw=raw)
    assert got == status, payload
    _app("shop", envs)
    got, payload = admin_api.call("POST", "/api/v1/apps/shop/start", "/apps/{name}/start", raw=raw)
    assert got == status, payload


def test_start_stop_restart_202_and_audited(admin_api, envs):
    _app("shop", envs)
    for operation in ("start", "stop", "restart"):
        status, body = admin_api.call("POST", f"/api/v1/apps/shop/{operation}", f"/apps/{{name}}/{operation}")
        assert status == 202 and body["app"] == "shop"
        entry = AuditEntry.objects.get(request_id=body["request_id"])
        assert (entry.action, entry.via, entry.user.username) == (operation, "api", "root")
        assert entry.environments == ["env_a", "env_b"]
    status, body = admin_api.call("POST", "/api/v1/apps/shop/stop", "/apps/{name}/stop", {"environments": ["env_b"]})
    assert status == 202
    assert AuditEntry.objects.get(request_id=body["request_id"]).environments == ["env_b"]
    for bad in ({"environments": ["env_z"]}, {"environments": "env_a"}, {"environments": []}, {"force": True}):
        status, body = admin_api.call("POST", "/api/v1/apps/shop/start", "/apps/{name}/start", bad)
        assert status == 400, bad
    status, _ = admin_api.call("POST", "/api/v1/apps/ghost/start", "/apps/{name}/start")
    assert status == 404
    status, body = admin_api.call("POST", "/api/v1/apps/shop/explode")
    assert status == 404 and "error" in body
    status, body = admin_api.call("GET", "/api/v1/apps/shop/start")
    assert status == 405 and "error" in body


def test_generation_orders_requests(admin_api, envs):
    app = _app("shop", envs)
    before = Application.objects.get(pk=app.pk).generation
    admin_api.call("POST", "/api/v1/apps/shop/start", "/apps/{name}/start")
    admin_api.call("POST", "/api/v1/apps/shop/stop", "/apps/{name}/stop")
    app = Application.objects.get(pk=app.pk)
    assert app.generation == before + 2
    assert not app.placements.filter(desired_running=True).exists()
    assert set(app.placements.values_list("status", flat=True)) == {"stopped"}


def test_delete_204_with_and_without_data(admin_api, envs):
    _app("shop", envs)
    _app("crm", envs)
    status, body = admin_api.call("DELETE", "/api/v1/apps/shop?drop_data=maybe", "/apps/{name}")
    assert status == 400 and "drop_data" in body["errors"]
    status, _ = admin_api.call("DELETE", "/api/v1/apps/shop", "/apps/{name}")
    assert status == 204
    status, _ = admin_api.call("DELETE", "/api/v1/apps/crm?drop_data=true", "/apps/{name}")
    assert status == 204
    assert not Application.objects.exists()
    assert AuditEntry.objects.filter(app_name="shop", action="delete").exists()
    assert AuditEntry.objects.filter(app_name="crm", action="delete_with_data").exists()
    status, _ = admin_api.call("DELETE", "/api/v1/apps/crm", "/apps/{name}")
    assert status == 404


def test_permissions_match_the_admin(document, envs):
    _app("shop", envs)
    _t, viewer_raw = ApiToken.issue(create_user("viewer", ["view_application", "view_environment"]))
    _t, starter_raw = ApiToken.issue(create_user("starter", ["view_application", "start_application"]))
    _t, nobody_raw = ApiToken.issue(create_user("nobody"))
    viewer, starter, nobody = (
        ApiClient(viewer_raw, document=document),
        ApiClient(starter_raw, document=document),
        ApiClient(nobody_raw, document=document),
    )

    assert viewer.call("GET", "/api/v1/apps", "/apps")[0] == 200
    assert viewer.call("GET", "/api/v1/environments", "/environments")[0] == 200
    assert nobody.call("GET", "/api/v1/apps", "/apps")[0] == 403
    assert nobody.call("GET", "/api/v1/apps/shop", "/apps/{name}")[0] == 403
    for operation in ("start", "stop", "restart"):
        assert viewer.call("POST", f"/api/v1/apps/shop/{operation}", f"/apps/{{name}}/{operation}")[0] == 403
    assert starter.call("POST", "/api/v1/apps/shop/start", "/apps/{name}/start")[0] == 202
    assert starter.call("POST", "/api/v1/apps/shop/stop", "/apps/{name}/stop")[0] == 403
    assert starter.call("DELETE", "/api/v1/apps/shop", "/apps/{name}")[0] == 403
    body = {"name": "new", "environments": ["env_a"]}
    assert starter.call("POST", "/api/v1/apps", "/apps", body)[0] == 403
    assert AuditEntry.objects.filter(app_name="shop", user__username="starter").count() == 1
    assert Application.objects.filter(name="shop").exists()


def test_unknown_api_path_is_json_404():
    response = Client().get("/api/v1/nothing/here")
    assert response.status_code == 404 and "error" in response.json()


def test_openapi_documents_every_route(document):
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {
        "/environments",
        "/apps",
        "/apps/{name}",
        "/apps/{name}/start",
        "/apps/{name}/stop",
        "/apps/{name}/restart",
        "/apps/{name}/logs",
        "/apps/{name}/move",
        "/jobs/{job_id}",
        "/jobs/{job_id}/cancel",
        "/environments/{name}/drain",
        "/environments/{name}/undrain",
        "/apps/{name}/backups",
        "/apps/{name}/restore",
        "/apps/{name}/figures",
    }
    # The checker is not a rubber stamp.
    assert schema_check.response_errors(document, "/apps", "GET", 200, {"apps": [{"name": "x"}]})
    assert schema_check.response_errors(document, "/apps", "GET", 418, {})


def test_openapi_enums_come_from_the_catalogue_and_the_models(document):
    schemas = document["components"]["schemas"]
    assert schemas["AppCreate"]["properties"]["modules"]["items"]["enum"] == list(catalogue.modules())
    assert schemas["StartMode"]["enum"] == list(StartMode.values)
    assert schemas["AppStatus"]["enum"] == list(AppStatus.values)
    assert schemas["EnvironmentStatus"]["enum"] == list(EnvironmentStatus.values)
    assert schemas["AppCreate"]["example"]["name"] == "sales_eu"


def test_docs_page_needs_no_token_and_uses_no_cdn():
    response = Client().get("/api/v1/docs")
    assert response.status_code == 200
    html = response.content.decode()
    assert "/api/v1/openapi.json" in html
    assert not re.search(r"(?:src|href)=[\"']?(?:https?:)?//", html), "an external URL in the docs page"
    assets = re.findall(r"(?:src|href)=\"(/static/[^\"]+)\"", html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        assert Client().get(asset).status_code == 200, asset
    # Viewing the page is free; calling the API from it still takes a token.
    assert Client().get("/api/v1/apps").status_code == 401


def test_create_api_token_prints_the_token_alone():
    User.objects.create_user("ops")
    out = io.StringIO()
    call_command("create_api_token", "ops", stdout=out)
    raw = out.getvalue().strip()
    assert "\n" not in raw and len(raw) >= 40
    token = ApiToken.objects.get(token_hash=ApiToken.hash(raw))
    assert token.user.username == "ops"
    with pytest.raises(Exception, match="no user"):
        call_command("create_api_token", "ghost", stdout=io.StringIO())


def test_issuing_a_token_is_audited_naming_who_asked(operator):
    User.objects.create_user("ci_bot")
    out = io.StringIO()
    call_command("create_api_token", "ci_bot", "--name", "deploys", "--by", "operator", stdout=out)
    raw = out.getvalue().strip()
    token = ApiToken.objects.get(token_hash=ApiToken.hash(raw))
    entry = AuditEntry.objects.get(action="api_token_issued")
    assert (entry.user, entry.via) == (operator, "cli")
    assert entry.error.startswith(f"token {token.prefix}… of ci_bot (deploys); manage.py create_api_token run as ")
    assert raw not in entry.error
    # Without --by the entry names nobody but says which system account ran the command.
    call_command("create_api_token", "ci_bot", stdout=io.StringIO())
    unnamed = AuditEntry.objects.filter(action="api_token_issued").order_by("-id").first()
    assert unnamed.user is None and "run as " in unnamed.error
    with pytest.raises(Exception, match="--by: no active user"):
        call_command("create_api_token", "ci_bot", "--by", "ghost", stdout=io.StringIO())


@pytest.mark.django_db(transaction=True)  # on_commit callbacks run for real, as in production
def test_requests_while_redis_is_down_get_503_and_an_honest_audit_entry(document, settings):
    """Redis unreachable (a closed port) after the change commits: stop and restart
    are not delivered and their audit entries are closed as errors saying so; a start stays
    queued and pending, since the start queue's recovery check enqueues it again; a delete is
    refused before anything changes."""
    envs = [
        Environment.objects.create(name="env_a", url="http://127.0.0.1:15000"),
        Environment.objects.create(name="env_b", url="http://127.0.0.1:16000"),
    ]
    for name in ("down_app", "down_gone"):
        _app(name, envs)
    _token, raw = ApiToken.issue(create_user("root", superuser=True))
    api = ApiClient(raw, document=document)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings.APP_CONFIG = dataclasses.replace(settings.APP_CONFIG, command_redis_url=dead, supervisor_redis_url=dead)

    for operation in ("stop", "restart"):
        code, body = api.call("POST", f"/api/v1/apps/down_app/{operation}", f"/apps/{{name}}/{operation}")
        assert code == 503 and f"the {operation} of down_app was not delivered" in body["error"], body
        entry = AuditEntry.objects.get(app_name="down_app", action=operation)
        assert entry.result == "error" and entry.error.startswith(outbox.NOT_DELIVERED), entry.error
    assert "ask again once Redis is back" in entry.error

    code, body = api.call("POST", "/api/v1/apps/down_app/start", "/apps/{name}/start")
    assert code == 503 and "enqueues it again once Redis is back" in body["error"], body
    assert AuditEntry.objects.get(app_name="down_app", action="start").result == "pending"
    assert set(AppEnvironment.objects.filter(application__name="down_app").values_list("status", flat=True)) == {
        "queued"
    }

    code, body = api.call("POST", "/api/v1/apps", "/apps", {"name": "down_new", "environments": ["env_a"]})
    assert code == 503 and "creation of down_new is refused and nothing was changed" in body["error"], body
    assert not Application.objects.filter(name="down_new").exists()

    # A delete could never be carried out later (no worker would learn to unload an app the
    # registry forgot), so it is refused before anything changes.
    code, body = api.call("DELETE", "/api/v1/apps/down_gone", "/apps/{name}")
    assert code == 503 and "refused and nothing was changed" in body["error"], body
    assert Application.objects.filter(name="down_gone").exists()
    assert not AuditEntry.objects.filter(app_name="down_gone", action="delete").exists()


@pytest.mark.parametrize("username", ["<b>boss</b>", "boss\nroot", "two words", "x" * 151])
def test_api_refuses_the_admin_usernames_the_admin_form_refuses(operator, envs, document, username):
    """One rule (apps_registry.names.clean_admin_username) for both: 400 here, the form's error there."""
    api = ApiClient.for_user(operator, document=document)
    body = {"name": "crm", "environments": ["env_a"], "admin_username": username}
    status, payload = api.post("/api/v1/apps", body, template="/apps")
    assert status == 400, payload
    [message] = payload["errors"]["admin_username"]
    assert "may hold letters, digits and @ . + - _ only" in message
    assert not Application.objects.exists()

    browser = Client()
    browser.force_login(operator)
    env = Environment.objects.get(name="env_a")
    form = {"name": "crm", "target_environments": [env.pk], "start_mode": "manual", "admin_username": username}
    page = browser.post("/admin/apps_registry/application/add/", form)
    assert page.status_code == 200
    assert "may hold letters, digits and @ . + - _ only" in page.content.decode()
    assert not Application.objects.exists()


def test_api_takes_the_admin_username_stripped_as_the_form_does(operator, envs, redis_conn):
    # Blank is refused here (the form's blank field means its initial "admin"; here, leave it out).
    status, payload = ApiClient.for_user(operator).post(
        "/api/v1/apps", {"name": "crm", "environments": ["env_a"], "admin_username": "   "}
    )
    assert status == 400 and "admin_username" in payload["errors"], payload
    status, payload = ApiClient.for_user(operator).post(
        "/api/v1/apps",
        {"name": "crm", "environments": ["env_a"], "admin_username": "  boss.1@x ", "admin_password": "pw"},
    )
    assert status == 201, payload
    assert Application.objects.get(name="crm").options["initial_admin"]["username"] == "boss.1@x"


def test_the_operators_own_password_is_refused_for_an_apps_first_admin(operator, envs, document):
    """The app's spec carries its first admin's password hash to the workers through Redis:
    never a hash of the supervisor user's own password (API and admin form alike)."""
    api = ApiClient.for_user(operator, document=document)
    body = {"name": "crm", "environments": ["env_a"], "admin_password": PASSWORD}
    status, payload = api.post("/api/v1/apps", body, template="/apps")
    assert status == 400, payload
    assert "other than your own supervisor password" in payload["errors"]["admin_password"][0]

    browser = Client()
    browser.force_login(operator)
    env = Environment.objects.get(name="env_a")
    form = {"name": "crm", "target_environments": [env.pk], "start_mode": "manual", "admin_password": PASSWORD}
    page = browser.post("/admin/apps_registry/application/add/", form)
    assert page.status_code == 200
    assert "other than your own supervisor password" in page.content.decode()
    assert not Application.objects.exists()
