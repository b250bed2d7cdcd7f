"""Admin operations in process: bulk and row actions behind confirmation pages and their own
permissions, the audit trail and token admins, the live status endpoint, recent history,
start on first visit."""

from __future__ import annotations

import dataclasses

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from apps_registry.control import first_visit
from apps_registry.control.start_queue import enqueue
from apps_registry.models import ApiToken, AppEnvironment, Application, AuditEntry, Environment
from apps_registry.registry import actions

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/apps_registry/application/"


@pytest.fixture
def envs():
    return [
        Environment.objects.create(name="env_a", url="http://127.0.0.1:15000"),
        Environment.objects.create(name="env_b", url="http://127.0.0.1:16000"),
    ]


@pytest.fixture
def apps(envs):
    return [
        actions.create_application(name=name, environments=envs, options={"modules": ["contacts"]})
        for name in ("alpha", "beta")
    ]


def _client(username: str, *perms: str, superuser: bool = False) -> tuple[Client, User]:
    if superuser:
        user = User.objects.create_superuser(username, password="x")
    else:
        user = User.objects.create_user(username, password="x", is_staff=True)
        for perm in perms:
            user.user_permissions.add(Permission.objects.get(codename=perm, content_type__app_label="apps_registry"))
    client = Client()
    client.force_login(user)
    return client, user


def _bulk(client: Client, operation: str, apps: list[Application], confirm: bool, **extra):
    data = {"action": f"{operation}_applications", "_selected_action": [a.pk for a in apps], **extra}
    if confirm:
        data["confirm"] = "yes"
    return client.post(CHANGELIST, data)


@pytest.mark.parametrize("operation", ["start", "stop", "restart", "remove"])
def test_bulk_action_asks_for_confirmation_then_acts(apps, operation):
    client, _ = _client("root", superuser=True)
    page = _bulk(client, operation, apps, confirm=False)
    assert page.status_code == 200
    assert f"Yes, {operation}" in page.content.decode()
    assert "alpha" in page.content.decode() and "beta" in page.content.decode()
    assert not AuditEntry.objects.filter(action__startswith=operation).exists()
    done = _bulk(client, operation, apps, confirm=True)
    assert done.status_code == 302
    entries = AuditEntry.objects.filter(action=operation, user__username="root")
    assert sorted(entries.values_list("app_name", flat=True)) == ["alpha", "beta"]


def test_remove_can_drop_data(apps):
    client, _ = _client("root", superuser=True)
    _bulk(client, "remove", apps[:1], confirm=True, drop_data="on")
    assert AuditEntry.objects.filter(app_name="alpha", action="remove_with_data").exists()


def test_row_action_has_its_own_confirmation_page(apps):
    client, _ = _client("root", superuser=True)
    url = f"{CHANGELIST}{apps[0].pk}/operation/start/"  # the apps are stopped: start is what is offered
    listing = client.get(CHANGELIST).content.decode()
    assert url in listing
    page = client.get(url)
    assert page.status_code == 200 and "Yes, start" in page.content.decode()
    assert not AuditEntry.objects.filter(action="start").exists()
    assert client.post(url, {"confirm": "yes"}).status_code == 302
    assert AuditEntry.objects.filter(action="start", app_name="alpha").count() == 1
    assert client.get(f"{CHANGELIST}{apps[0].pk}/operation/explode/").status_code == 403


def test_each_operation_needs_its_own_permission(apps):
    client, _ = _client("starter", "view_application", "start_application")
    listing = client.get(CHANGELIST).content.decode()
    assert 'value="start_applications"' in listing
    assert 'value="stop_applications"' not in listing
    assert "/operation/stop/" not in listing and "/operation/start/" in listing
    # Not offered, so not done, even when posted by hand.
    _bulk(client, "stop", apps, confirm=True)
    assert client.post(f"{CHANGELIST}{apps[0].pk}/operation/stop/", {"confirm": "yes"}).status_code == 403
    assert client.post(f"{CHANGELIST}{apps[0].pk}/operation/remove/", {"confirm": "yes"}).status_code == 403
    assert not AuditEntry.objects.filter(action__in=["stop", "remove"]).exists()
    _bulk(client, "start", apps[:1], confirm=True)
    assert AuditEntry.objects.filter(action="start", user__username="starter").count() == 1


def test_app_page_shows_recent_history_and_audit_trail_is_filterable(apps):
    client, _ = _client("root", superuser=True)
    actions.request_stop(apps[0], User.objects.get(username="root"))
    page = client.get(f"{CHANGELIST}{apps[0].pk}/change/").content.decode()
    assert "Recent history" in page and "stop" in page and "root" in page
    trail = client.get("/admin/apps_registry/auditentry/?app_name=alpha")
    assert trail.status_code == 200
    rows = trail.context["cl"].result_list
    assert {e.app_name for e in rows} == {"alpha"}
    by_user = client.get(f"/admin/apps_registry/auditentry/?user__id__exact={User.objects.get(username='root').pk}")
    assert {e.action for e in by_user.context["cl"].result_list} == {"stop"}
    # Read-only: no add, no edit, no delete.
    entry = AuditEntry.objects.first()
    assert client.get("/admin/apps_registry/auditentry/add/").status_code == 403
    assert client.post(f"/admin/apps_registry/auditentry/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEntry.objects.filter(pk=entry.pk).exists()


def test_changelist_links_the_start_queue_dashboard(apps):
    client, _ = _client("root", superuser=True)
    page = client.get(CHANGELIST).content.decode()
    assert start_queue_link() in page
    assert client.get(start_queue_link()).status_code == 200


def start_queue_link() -> str:
    from apps_registry.admin.operations import rq_dashboard_url

    return rq_dashboard_url()


def test_tokens_are_revoked_in_the_admin_and_the_audit_names_who(operator):
    client, user = _client("root", superuser=True)
    token, raw = ApiToken.issue(operator, name="ci")
    already, _ = ApiToken.issue(operator, name="old")
    ApiToken.objects.filter(pk=already.pk).update(revoked_at=timezone.now())
    selection = {"action": "revoke_tokens", "_selected_action": [token.pk, already.pk]}
    asked = client.post("/admin/apps_registry/apitoken/", selection)
    assert asked.status_code == 200 and "Yes, revoke" in asked.content.decode()
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None  # nothing before the confirmation
    response = client.post("/admin/apps_registry/apitoken/", {**selection, "confirm": "yes"})
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get("/api/v1/apps").status_code == 401
    assert raw not in client.get(f"/admin/apps_registry/apitoken/{token.pk}/change/").content.decode()
    # One entry, for the token this revoke changed, naming the actor, the token and its owner.
    entries = list(AuditEntry.objects.filter(action="api_token_revoked"))
    assert [(e.user, e.via, e.error) for e in entries] == [(user, "admin", f"token {token.prefix}… of operator (ci)")]
    trail = client.get("/admin/apps_registry/auditentry/?action=api_token_revoked").content.decode()
    assert "api_token_revoked" in trail and raw not in trail


def test_status_endpoint_is_staff_only_and_reports_queue_positions(
    apps, envs, redis_conn, django_capture_on_commit_callbacks
):
    url = "/admin/app-supervisor/status.json"
    outsider = Client()
    outsider.force_login(User.objects.create_user("visitor", password="x"))
    assert outsider.get(f"{url}?apps={apps[0].pk}").status_code == 403
    client, _ = _client("root", superuser=True)
    queue = enqueue.get_queue()
    queue.empty()
    try:
        for app in apps:
            generation = actions.request_start(app) and Application.objects.get(pk=app.pk).generation
            # django-rq enqueues on commit only (COMMIT_MODE=on_db_commit).
            with django_capture_on_commit_callbacks(execute=True):
                enqueue.enqueue_start(app.name, ["env_a", "env_b"], generation=generation, request_id="r")
        data = client.get(f"{url}?apps={apps[0].pk},{apps[1].pk}&environments={envs[0].pk}").json()
    finally:
        queue.empty()
    beta = data["apps"][str(apps[1].pk)]
    assert beta["name"] == "beta"
    since = beta["statuses"]["env_a"].pop("since")
    assert since  # when it became queued, as the app page shows dates
    assert beta["statuses"]["env_a"] == {
        "status": "queued",
        "observed": "queued",
        "detail": "",
        "error": "",
        "position": 2,
    }
    assert data["apps"][str(apps[0].pk)]["statuses"]["env_b"]["position"] == 1
    assert data["environments"][str(envs[0].pk)]["name"] == "env_a"
    assert "apps_registry/status.js" in client.get(CHANGELIST).content.decode()


def test_first_visit_queues_one_start(envs, redis_conn):
    lazy = actions.create_application(name="lazy", environments=envs, options={"start_mode": "on_first_visit"})
    manual = actions.create_application(name="manual", environments=envs, options={})
    assert first_visit.start_on_first_visit(manual.name) is None
    assert first_visit.start_on_first_visit(lazy.name) == "queued"
    assert first_visit.start_on_first_visit(lazy.name) == "queued"  # a second visitor: no second request
    assert AuditEntry.objects.filter(app_name="lazy", action="start", via="first_visit").count() == 1
    assert set(AppEnvironment.objects.filter(application=lazy).values_list("status", flat=True)) == {"queued"}


def test_start_now_on_the_add_page_queues_a_start(envs):
    client, _ = _client("root", superuser=True)
    assert "Start now" in client.get(f"{CHANGELIST}add/").content.decode()
    data = {
        "name": "eager",
        "target_environments": [envs[0].pk],
        "start_mode": "manual",
        "admin_username": "admin",
        "admin_password": "s3cret-Pass",
        "start_now": "on",
    }
    assert client.post(f"{CHANGELIST}add/", data).status_code == 302
    assert AuditEntry.objects.filter(app_name="eager", action="start", user__username="root").count() == 1
    assert AppEnvironment.objects.get(application__name="eager").status == "queued"
    # Without the start permission the box is not offered, and nothing is started.
    other, _ = _client("adder", "add_application", "view_application", "view_environment")
    assert "Start now" not in other.get(f"{CHANGELIST}add/").content.decode()
    other.post(f"{CHANGELIST}add/", {**data, "name": "patient"})
    assert Application.objects.filter(name="patient").exists()
    assert not AuditEntry.objects.filter(app_name="patient", action="start").exists()


@pytest.mark.django_db(transaction=True)  # on_commit callbacks run for real, as in production
def test_admin_stop_while_redis_is_down_says_not_delivered_and_audits_it(apps, settings):
    from django.contrib.messages import get_messages

    from tests.support.processes import free_port

    client, _ = _client("root", superuser=True)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings.APP_CONFIG = dataclasses.replace(settings.APP_CONFIG, command_redis_url=dead, supervisor_redis_url=dead)
    done = _bulk(client, "stop", apps[:1], confirm=True)
    assert done.status_code == 302
    warnings = [str(m) for m in get_messages(done.wsgi_request) if m.level_tag == "warning"]
    assert len(warnings) == 1 and warnings[0].startswith("Redis (the command channel) is unavailable"), warnings
    assert "the stop of alpha was not delivered" in warnings[0]
    entry = AuditEntry.objects.get(app_name="alpha", action="stop")
    assert entry.result == "error" and entry.error.startswith("not delivered: Redis unavailable"), entry.error


@pytest.mark.django_db(transaction=True)
def test_admin_add_and_delete_while_redis_is_down_are_refused_with_a_message(apps, envs, settings):
    from django.contrib.messages import get_messages

    from tests.support.processes import free_port

    client, _ = _client("root", superuser=True)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings.APP_CONFIG = dataclasses.replace(settings.APP_CONFIG, command_redis_url=dead, supervisor_redis_url=dead)
    data = {
        "name": "offline_add",
        "target_environments": [envs[0].pk],
        "start_mode": "manual",
        "admin_username": "admin",
        "admin_password": "s3cret-Pass",
    }
    added = client.post(f"{CHANGELIST}add/", data)
    assert added.status_code == 302
    errors = [str(m) for m in get_messages(added.wsgi_request) if m.level_tag == "error"]
    assert len(errors) == 1 and "creation of offline_add is refused" in errors[0], errors
    assert not Application.objects.filter(name="offline_add").exists()
    client.get(CHANGELIST)  # shows (and so consumes) that message

    deleted = client.post(f"{CHANGELIST}{apps[0].pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 302
    errors = [str(m) for m in get_messages(deleted.wsgi_request) if m.level_tag == "error"]
    assert len(errors) == 1 and f"delete of {apps[0].name} is refused" in errors[0], errors
    assert Application.objects.filter(pk=apps[0].pk).exists()


def test_a_bulk_delete_racing_another_delete_warns_instead_of_crashing(apps):
    """Two operators delete the same apps at once: the one that comes second finds rows that are
    gone by the time it locks them (ApplicationGone) — a warning, not a 500."""
    from django.contrib import admin as django_admin
    from django.contrib.messages.storage.fallback import FallbackStorage
    from django.test import RequestFactory

    model_admin = django_admin.site._registry[Application]
    request = RequestFactory().post(CHANGELIST)
    request.user = User.objects.create_superuser("second", password="x")
    request.session = {}
    request._messages = FallbackStorage(request)
    stale = list(Application.objects.filter(pk__in=[a.pk for a in apps]))  # read before the other delete
    actions.delete_application(apps[1])  # the other operator was faster for beta
    model_admin.delete_queryset(request, stale)
    assert not Application.objects.exists()
    assert [str(m) for m in request._messages] == ["Already deleted by another request: beta."]
    assert AuditEntry.objects.filter(action="delete", app_name="beta").count() == 1
