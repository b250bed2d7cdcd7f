"""The "App supervisor" admin: pages render with data, changes go through the actions,
and list pages cost the same number of queries for 10 rows as for 1,000."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.contrib.auth.hashers import check_password
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps_registry.models import AppEnvironment, Application, AppStatus, AuditEntry, Environment
from tests.support import identity

pytestmark = pytest.mark.django_db

APPS_URL = "/admin/apps_registry/application/"
ENVS_URL = "/admin/apps_registry/environment/"


def make_envs(count: int, prefix: str = "env") -> list[Environment]:
    now = timezone.now()
    Environment.objects.bulk_create(
        Environment(
            name=f"{prefix}_{i:04d}",
            url=f"http://127.0.0.1:{15000 + i}",
            version="1.0",
            last_heartbeat=now,
            apps_running=["a", "b"],
        )
        for i in range(count)
    )
    return list(Environment.objects.filter(name__startswith=f"{prefix}_").order_by("name"))


def make_apps(count: int, envs: list[Environment]) -> None:
    Application.objects.bulk_create(
        Application(name=f"app_{i:05d}", display_name=f"App {i}", options={"modules": ["contacts"]})
        for i in range(count)
    )
    apps = Application.objects.filter(name__startswith="app_")
    statuses = AppStatus.values
    AppEnvironment.objects.bulk_create(
        AppEnvironment(application=app, environment=env, status=statuses[(app.pk + j) % len(statuses)])
        for app in apps
        for j, env in enumerate(envs)
    )


def count_queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured)


# --- Rendering -------------------------------------------------------------------------------


def test_index_shows_app_supervisor_section(admin_client):
    page = admin_client.get("/admin/").content.decode()
    assert "App supervisor" in page
    assert "Environments" in page and "Applications" in page


def test_application_list_shows_one_badge_per_environment_sorted(admin_client):
    envs = make_envs(3, prefix="zone")
    app = Application.objects.create(name="sales_eu", display_name="Sales EU")
    # Created in reverse order: the page must still sort them by environment name.
    for env, status in zip(reversed(envs), ["error", "running", "queued"], strict=True):
        AppEnvironment.objects.create(application=app, environment=env, status=status)
    page = admin_client.get(APPS_URL).content.decode()
    assert "Sales EU" in page
    badges = re.findall(r'class="appsup-badge appsup-(\w+)" title="(zone_\d+): \w+"', page)
    assert badges == [("queued", "zone_0000"), ("running", "zone_0001"), ("error", "zone_0002")]
    assert "apps_registry/admin.css" in page


def test_environment_list_shows_status_age_and_apps(admin_client, redis_conn):
    now = timezone.now()
    Environment.objects.create(
        name="env_on", url="http://h:1", version="2.1", last_heartbeat=now - dt.timedelta(hours=1)
    )
    Environment.objects.create(name="env_off", url="http://h:2", last_heartbeat=now - dt.timedelta(seconds=40))
    Environment.objects.create(
        name="env_gone", url="http://h:3", last_heartbeat=now - dt.timedelta(seconds=5), stopped_at=now
    )
    # The lease in Redis is fresher than the database's heartbeat and wins.
    identity.bind("env_on")
    identity.write_lease("env_on", now.timestamp() - 1, client=redis_conn)
    page = admin_client.get(ENVS_URL).content.decode()
    assert re.search(r"env_on.*appsup-online.*1 s ago", page, re.S)
    assert re.search(r"env_off.*appsup-offline.*40 s ago", page, re.S)
    assert re.search(r"env_gone.*appsup-stopped", page, re.S)
    assert "2.1" in page
    assert "/admin/apps_registry/environment/add/" not in page


def test_environment_detail_is_view_only(admin_client):
    env = Environment.objects.create(name="env_a", url="http://h:1")
    response = admin_client.get(f"{ENVS_URL}{env.pk}/change/")
    assert response.status_code == 200
    assert b'name="_save"' not in response.content
    assert admin_client.get(f"{ENVS_URL}add/").status_code == 403


def test_application_filters_and_search(admin_client):
    envs = make_envs(2, prefix="zone")
    make_apps(3, envs)
    AppEnvironment.objects.update(status=AppStatus.STOPPED)
    AppEnvironment.objects.filter(application__name="app_00001", environment=envs[1]).update(status="running")
    page = admin_client.get(APPS_URL + "?status=running").content.decode()
    assert set(re.findall(r">(app_\d{5})<", page)) == {"app_00001"}
    Application.objects.create(name="lonely")
    page = admin_client.get(APPS_URL + "?environment=zone_0001").content.decode()
    assert "lonely" not in page and "app_00000" in page
    page = admin_client.get(APPS_URL + "?q=App+2").content.decode()
    assert set(re.findall(r">(app_\d{5})<", page)) == {"app_00002"}


# --- Constant query counts ---------------------------------------------------------------------


@pytest.mark.parametrize("url", [APPS_URL, ENVS_URL])
def test_list_pages_query_count_is_constant(admin_client, url, redis_conn):
    from apps_registry.control.discovery import get_discovery

    get_discovery().ensure_built(force=True)  # so no request of this test rebuilds the cache
    envs = make_envs(3)
    make_apps(10, envs)
    make_envs(7, prefix="spare")  # 10 environments on the environments page
    admin_client.get(url)  # warm per-process caches (content types, permissions)
    small = count_queries(admin_client, url)

    Application.objects.bulk_create(Application(name=f"big_{i:05d}", display_name=f"Big {i}") for i in range(990))
    AppEnvironment.objects.bulk_create(
        AppEnvironment(application=app, environment=env)
        for app in Application.objects.filter(name__startswith="big_")
        for env in envs
    )
    make_envs(990, prefix="more")
    assert Application.objects.count() == 1000 and AppEnvironment.objects.count() == 3000
    large = count_queries(admin_client, url)
    assert large == small, f"{url}: {small} queries for 10 rows, {large} for 1,000"
    assert small <= 11  # the backups column adds one query per page (admin/backups.py)


# --- Changes go through the actions --------------------------------------------------------------


def test_create_application_with_generated_password(admin_client):
    envs = make_envs(2)
    response = admin_client.post(
        APPS_URL + "add/",
        {
            "name": "sales_eu",
            "display_name": "Sales EU",
            "description": "",
            "target_environments": [envs[0].pk, envs[1].pk],
            "modules": ["contacts", "tasks"],
            "start_mode": "on_first_visit",
            "admin_username": "boss",
            "admin_password": "",
        },
        follow=True,
    )
    assert response.status_code == 200
    app = Application.objects.get(name="sales_eu")
    assert sorted(app.placements.values_list("environment__name", flat=True)) == ["env_0000", "env_0001"]
    assert app.options["modules"] == ["contacts", "tasks"]
    assert app.options["start_mode"] == "on_first_visit"
    initial = app.options["initial_admin"]
    assert set(initial) == {"username", "password_hash"} and initial["username"] == "boss"
    shown = re.search(r"boss / (\S+) \(shown only this once", response.content.decode())
    assert shown, "the generated password is shown once"
    assert check_password(shown.group(1), initial["password_hash"])
    assert shown.group(1) not in str(app.options)
    assert AuditEntry.objects.filter(action="create", app_name="sales_eu").exists()


def test_create_application_with_given_password_stores_only_a_hash(admin_client):
    env = make_envs(1)[0]
    response = admin_client.post(
        APPS_URL + "add/",
        {
            "name": "crm2",
            "target_environments": [env.pk],
            "start_mode": "manual",
            "admin_username": "",
            "admin_password": "s3cret-Pass",
        },
        follow=True,
    )
    assert "s3cret-Pass" not in response.content.decode()
    initial = Application.objects.get(name="crm2").options["initial_admin"]
    assert initial["username"] == "admin"
    assert check_password("s3cret-Pass", initial["password_hash"])
    assert "s3cret-Pass" not in str(initial)


@pytest.mark.parametrize(
    ("name", "environments", "error"),
    [
        ("main", True, "reserved"),
        ("Bad Name", True, "lowercase letter"),
        ("fine", False, "This field is required"),
    ],
)
def test_create_application_refuses_bad_input(admin_client, name, environments, error):
    env = make_envs(1)[0]
    data = {"name": name, "start_mode": "manual", "admin_username": "admin"}
    if environments:
        data["target_environments"] = [env.pk]
    response = admin_client.post(APPS_URL + "add/", data)
    assert response.status_code == 200
    assert error in response.content.decode()
    assert not Application.objects.exists()
    assert not AuditEntry.objects.exists()


def test_edit_application_changes_options_and_environments(admin_client):
    envs = make_envs(3)
    response = admin_client.post(
        APPS_URL + "add/",
        {"name": "ops", "target_environments": [envs[0].pk], "modules": ["tasks"], "start_mode": "manual"},
    )
    assert response.status_code == 302
    app = Application.objects.get(name="ops")
    hash_before = app.options["initial_admin"]["password_hash"]
    page = admin_client.get(f"{APPS_URL}{app.pk}/change/").content.decode()
    assert 'name="admin_password"' not in page and 'value="tasks"' in page
    response = admin_client.post(
        f"{APPS_URL}{app.pk}/change/",
        {
            "display_name": "Operations",
            "description": "d",
            "target_environments": [envs[1].pk, envs[2].pk],
            "modules": ["contacts"],
            "start_mode": "on_first_visit",
        },
    )
    assert response.status_code == 302
    app.refresh_from_db()
    assert app.display_name == "Operations" and app.name == "ops"
    assert app.options["modules"] == ["contacts"] and app.options["start_mode"] == "on_first_visit"
    assert app.options["initial_admin"]["password_hash"] == hash_before
    assert sorted(app.placements.values_list("environment__name", flat=True)) == ["env_0001", "env_0002"]
    assert AuditEntry.objects.filter(app_name="ops", action="set_environments").exists()
    assert AuditEntry.objects.filter(app_name="ops", action="remove", environments=["env_0000"]).exists()


def test_delete_application_asks_then_goes_through_actions(admin_client):
    env = make_envs(1)[0]
    app = Application.objects.create(name="doomed")
    AppEnvironment.objects.create(application=app, environment=env)
    page = admin_client.get(f"{APPS_URL}{app.pk}/delete/").content.decode()
    assert "Delete the application" in page and "Also drop its database" in page
    assert Application.objects.filter(name="doomed").exists()
    response = admin_client.post(f"{APPS_URL}{app.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Application.objects.filter(name="doomed").exists()
    assert AuditEntry.objects.filter(action="delete", app_name="doomed", environments=["env_0000"]).exists()


# --- Environment actions and permissions -----------------------------------------------------------


def post_action(client, action: str, envs: list[Environment], confirm: str = "yes"):
    data = {"action": action, "_selected_action": [e.pk for e in envs], "confirm": confirm}
    return client.post(ENVS_URL, data, follow=True)


def test_disable_enable_forget_environments(admin_client):
    envs = make_envs(2)
    post_action(admin_client, "disable_environments", envs)
    assert not Environment.objects.filter(enabled=True).exists()
    assert AuditEntry.objects.filter(action="environment_disabled").count() == 2
    post_action(admin_client, "enable_environments", envs[:1])
    assert list(Environment.objects.filter(enabled=True).values_list("name", flat=True)) == ["env_0000"]
    Environment.objects.filter(pk=envs[1].pk).update(last_heartbeat=timezone.now() - dt.timedelta(days=1))
    post_action(admin_client, "forget_environments", envs[1:])
    assert list(Environment.objects.values_list("name", flat=True)) == ["env_0000"]
    assert AuditEntry.objects.filter(action="environment_forgotten", environments=["env_0001"]).exists()


def test_environment_actions_need_permissions(client):
    envs = make_envs(1)
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_environment"))
    client.force_login(user)
    page = client.get(ENVS_URL).content.decode()
    assert "disable_environments" not in page and "forget_environments" not in page
    post_action(client, "disable_environments", envs)
    post_action(client, "forget_environments", envs)
    assert Environment.objects.get().enabled
    assert not AuditEntry.objects.exists()

    user.user_permissions.add(Permission.objects.get(codename="change_environment"))
    user = User.objects.get(pk=user.pk)  # drop the permission cache
    client.force_login(user)
    post_action(client, "disable_environments", envs)
    post_action(client, "forget_environments", envs)
    assert not Environment.objects.get().enabled  # change allowed, delete still not


def test_list_applies_waiting_worker_events_first(admin_client, redis_conn):
    import time

    from apps_registry.control import ingest, keys, protocol

    env = make_envs(1)[0]
    app = Application.objects.create(name="fresh")
    # Marked starting a moment ago: a report is ordered by its Redis entry id, whose
    # millisecond resolution cannot tell apart two changes within the same millisecond.
    AppEnvironment.objects.create(
        application=app,
        environment=env,
        status=AppStatus.STARTING,
        status_changed_at=timezone.now() - dt.timedelta(seconds=1),
    )
    ingest._group_ready.clear()  # the stream was emptied by an earlier test's clean-up
    report = protocol.StatusReport(app="fresh", env=env.name, status="running", error="", at=time.time())
    redis_conn.xadd(keys.events_stream(), identity.signed_event(report))
    page = admin_client.get(APPS_URL).content.decode()
    assert 'appsup-running" title="env_0000: running"' in page


def test_static_files_are_served(client):
    css = client.get("/static/apps_registry/admin.css")
    assert css.status_code == 200
    assert b".appsup-running" in b"".join(css.streaming_content)
    assert client.get("/static/admin/css/base.css").status_code == 200


def test_disabled_environment_takes_no_new_apps(admin_client):
    envs = make_envs(2)
    Environment.objects.filter(pk=envs[1].pk).update(enabled=False)
    page = admin_client.get(APPS_URL + "add/").content.decode()
    assert "env_0000" in page and "env_0001" not in page
    response = admin_client.post(
        APPS_URL + "add/", {"name": "nope", "target_environments": [envs[1].pk], "start_mode": "manual"}
    )
    assert response.status_code == 200 and not Application.objects.exists()
    # Already placed there: it stays listed (and selected) on the edit page.
    app = Application.objects.create(name="placed")
    AppEnvironment.objects.create(application=app, environment=envs[1])
    page = admin_client.get(f"{APPS_URL}{app.pk}/change/").content.decode()
    assert re.search(rf'value="{envs[1].pk}"[^>]*checked', page)


def test_bad_admin_username_is_refused(admin_client):
    env = make_envs(1)[0]
    response = admin_client.post(
        APPS_URL + "add/",
        {"name": "crm", "target_environments": [env.pk], "start_mode": "manual", "admin_username": "bad name!"},
    )
    assert response.status_code == 200
    assert "First admin username &#x27;bad name!&#x27; may hold letters, digits and @ . + - _ only" in (
        response.content.decode()
    )
    assert not Application.objects.exists()
