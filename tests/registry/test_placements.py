"""Editing an application: ``PATCH /api/v1/apps/<name>`` and the placement edits behind it and
the admin's change form. A placement edit converges: an app that runs is started on the
environments it gains (through the start queue) and never silently taken down on the ones it
loses."""

from __future__ import annotations

import pytest

from apps_registry.control.start_queue import enqueue
from apps_registry.models import AppEnvironment, Application, AppStatus, AuditEntry, Environment
from apps_registry.registry import actions
from tests.support.api import ApiClient

pytestmark = pytest.mark.django_db

APPS_URL = "/admin/apps_registry/application/"


@pytest.fixture
def envs():
    return [
        Environment.objects.create(name="env_a", url="http://127.0.0.1:15000"),
        Environment.objects.create(name="env_b", url="http://127.0.0.1:16000"),
    ]


@pytest.fixture
def api(operator, document):
    return ApiClient.for_user(operator, document=document)


@pytest.fixture
def document(client):
    return client.get("/api/v1/openapi.json").json()


def _app(name: str, envs: list[Environment], *, running_on: tuple[str, ...] = ()) -> Application:
    app = actions.create_application(name=name, environments=envs, options={"modules": []})
    AppEnvironment.objects.filter(application=app, environment__name__in=running_on).update(
        status=AppStatus.RUNNING, desired_running=True
    )
    return app


def _placed(name: str) -> dict[str, str]:
    rows = AppEnvironment.objects.filter(application__name=name).values_list("environment__name", "status")
    return dict(rows)


def _patch(api: ApiClient, name: str, body, **extra):
    return api.call("PATCH", f"/api/v1/apps/{name}", "/apps/{name}", body, **extra)


# --- PATCH /api/v1/apps/<name> ------------------------------------------------------------


def test_patch_descriptive_fields_200_and_audited(api, envs):
    _app("shop", envs[:1])
    status, body = _patch(api, "shop", {"display_name": "Shop EU", "description": "the EU shop"})
    assert status == 200, body
    assert body["name"] == "shop" and body["display_name"] == "Shop EU"
    app = Application.objects.get(name="shop")
    assert (app.display_name, app.description) == ("Shop EU", "the EU shop")
    assert AuditEntry.objects.filter(app_name="shop", action="update", via="api", user__username="operator").exists()
    status, body = _patch(api, "shop", {"display_name": ""})  # empty: the name, as on create
    assert status == 200 and body["display_name"] == "shop"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body"),
        ({"force": True}, "body"),
        ({"name": "other"}, "name"),
        ({"display_name": 3}, "display_name"),
        ({"display_name": "x" * 201}, "display_name"),
        ({"environments": []}, "environments"),
        ({"environments": ["env_a", "env_a"]}, "environments"),
        ({"environments": "env_a"}, "environments"),
        ({"environments": ["env_z"]}, "environments"),
        ({"environments": ["env_a"], "force": "yes"}, "force"),
    ],
)
def test_patch_refuses_bad_input_with_400(api, envs, body, field):
    _app("shop", envs[:1])
    status, payload = _patch(api, "shop", body)
    assert status == 400 and field in payload["errors"], payload
    assert Application.objects.get(name="shop").display_name == "shop"


def test_patch_404_and_permission(api, viewer, envs):
    status, _ = _patch(api, "ghost", {"display_name": "x"})
    assert status == 404
    _app("shop", envs[:1])
    status, _ = _patch(ApiClient.for_user(viewer, document=api.document), "shop", {"display_name": "x"})
    assert status == 403


def test_patch_adds_an_environment_to_a_stopped_app_without_starting_it(api, envs):
    _app("shop", envs[:1])
    status, body = _patch(api, "shop", {"environments": ["env_a", "env_b"]})
    assert status == 200, body
    assert body["environments"] == ["env_a", "env_b"]
    assert _placed("shop") == {"env_a": "stopped", "env_b": "stopped"}
    assert not AuditEntry.objects.filter(app_name="shop", action="start").exists()


def test_patch_adds_an_environment_to_a_running_app_and_starts_it_there(
    api, envs, redis_conn, django_capture_on_commit_callbacks
):
    _app("shop", envs[:1], running_on=("env_a",))
    with django_capture_on_commit_callbacks(execute=True):
        status, body = _patch(api, "shop", {"environments": ["env_a", "env_b"]})
    assert status == 202, body
    start = AuditEntry.objects.get(request_id=body["request_id"])
    assert (start.action, start.environments, start.via, start.result) == ("start", ["env_b"], "api", "pending")
    assert _placed("shop") == {"env_a": "running", "env_b": "queued"}
    app = Application.objects.get(name="shop")
    assert enqueue.job_id("shop", app.generation, 0, str(app.incarnation)) in enqueue.get_queue().get_job_ids()
    enqueue.get_queue().empty()


def test_patch_removing_every_environment_it_runs_on_is_409_unless_forced(api, envs):
    _app("shop", envs[:1], running_on=("env_a",))
    status, body = _patch(api, "shop", {"display_name": "Moved", "environments": ["env_b"]})
    assert status == 409 and "takes shop down" in body["error"] and "env_a" in body["error"], body
    # Refused as a whole: nothing changed, nothing sent.
    assert _placed("shop") == {"env_a": "running"}
    assert Application.objects.get(name="shop").display_name == "shop"
    assert not AuditEntry.objects.filter(app_name="shop").exclude(action="create").exists()

    status, body = _patch(api, "shop", {"environments": ["env_b"], "force": True})
    assert status == 202, body
    assert _placed("shop") == {"env_b": "queued"}
    assert AuditEntry.objects.filter(app_name="shop", action="remove", environments=["env_a"]).exists()
    assert AuditEntry.objects.get(request_id=body["request_id"]).environments == ["env_b"]


def test_patch_removing_one_of_two_running_environments_needs_no_force(api, envs):
    _app("shop", envs, running_on=("env_a", "env_b"))
    status, body = _patch(api, "shop", {"environments": ["env_a"]})
    assert status == 202, body  # the remove went out
    assert AuditEntry.objects.get(request_id=body["request_id"]).action == "remove"
    assert _placed("shop") == {"env_a": "running"}


def test_patch_is_in_the_openapi_document(document):
    operation = document["paths"]["/apps/{name}"]["patch"]
    assert {"200", "202", "400", "404", "409"} <= set(operation["responses"])
    schema = document["components"]["schemas"]["AppPatch"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"display_name", "description", "domain", "environments", "failover", "force"}


# --- The admin's change form ----------------------------------------------------------------


def _change(client, app: Application, envs: list[Environment], **extra):
    data = {
        "display_name": app.display_name,
        "description": "",
        "target_environments": [env.pk for env in envs],
        "modules": [],
        "start_mode": "manual",
        **extra,
    }
    return client.post(f"{APPS_URL}{app.pk}/change/", data, follow=True)


def test_admin_asks_before_taking_the_app_down(admin_client, envs):
    app = _app("shop", envs[:1], running_on=("env_a",))
    page = _change(admin_client, app, envs[1:]).content.decode()
    assert "shop goes down on env_a" in page, page
    assert "changed successfully" not in page
    assert _placed("shop") == {"env_a": "running"}

    page = _change(admin_client, app, envs[1:], confirm_takedown="on").content.decode()
    assert "changed successfully" in page
    assert "shop was taken down on env_a" in page.lower()  # (the admin capitalises messages)
    assert "start of shop on env_b was queued" in page
    assert _placed("shop") == {"env_b": "queued"}


def test_admin_adding_an_environment_to_a_running_app_starts_it_there(admin_client, envs):
    app = _app("shop", envs[:1], running_on=("env_a",))
    page = _change(admin_client, app, envs).content.decode()
    assert "start of shop on env_b was queued" in page
    assert _placed("shop") == {"env_a": "running", "env_b": "queued"}
    assert AuditEntry.objects.filter(app_name="shop", action="start", environments=["env_b"], via="admin").exists()
