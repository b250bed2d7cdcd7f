"""The operator cockpit in process: the app page's status per environment and its buttons by
state, per-environment operations (confirmed, audited, refused when the state does not offer
them), kept list filters, the dashboard's figures, the Environments list's live figures, the
delete page's drop-data choice, the "N new" count and the chooser's way back."""

from __future__ import annotations

import html
import re

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from apps_registry.models import AppEnvironment, Application, AppStatus, AuditEntry, Environment
from apps_registry.registry import actions
from tests.support import identity

pytestmark = pytest.mark.django_db
APPS = "/admin/apps_registry/application/"
STATUS = "/admin/app-supervisor/status.json"


@pytest.fixture
def online(redis_conn):
    """env_a and env_b, both online (fresh signed leases in Redis)."""
    for port, name in ((15000, "env_a"), (16000, "env_b")):
        Environment.objects.create(name=name, url=f"http://127.0.0.1:{port}")
        identity.bind(name)
        identity.write_lease(name, timezone.now().timestamp(), client=redis_conn)
    return list(Environment.objects.order_by("name"))


@pytest.fixture
def root() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="x"))
    return client


def _app(envs, name="shop", **statuses) -> Application:
    app = actions.create_application(
        name=name, environments=envs, options={"initial_admin": {"username": "boss", "password_hash": "x"}}
    )
    for env, status in statuses.items():
        AppEnvironment.objects.filter(application=app, environment__name=env).update(status=status, error="")
    return app


def _buttons(page: str, environment: str | None) -> dict[str, bool]:
    """Operation → shown (not hidden) for one environment's row, or the "all environments" line."""
    if environment:
        block = re.search(rf'<tr data-environment="{environment}">(.*?)</tr>', page, re.S).group(1)
    else:
        block = re.search(r'class="appsup-ops appsup-for-all">(.*?)</p>', page, re.S).group(1)
    found = {}
    for tag in re.findall(r"<a [^>]*appsup-op[^>]*>", block):
        operation = re.search(r'data-operation="(\w+)"', tag).group(1)
        found[operation] = " hidden" not in tag
    return found


def test_app_page_is_a_cockpit_with_buttons_by_state(online, root):
    app = _app(online, env_a="running", env_b="error")
    AppEnvironment.objects.filter(application=app, environment__name="env_b").update(error="migration failed: boom")
    page = root.get(f"{APPS}{app.pk}/change/").content.decode()
    assert "env_a: running" in page and "env_b: error" in page
    assert "migration failed: boom" in page
    assert _buttons(page, "env_a") == {"start": False, "stop": True, "restart": True}
    assert _buttons(page, "env_b") == {"start": True, "stop": False, "restart": False}
    assert _buttons(page, None) == {"start": True, "stop": True, "restart": True, "remove": True}
    # One Visit (the chooser: two environments), the first admin, our history instead of Django's.
    assert page.count(">Visit</a>") == 1 and f'href="/apps/{app.name}/admin/?env="' in page
    assert 'class="appsup-first-admin">boss<' in page
    assert f"/admin/apps_registry/auditentry/?app_name={app.name}" in page
    assert f"{APPS}{app.pk}/history/" not in page
    history = root.get(f"{APPS}{app.pk}/history/")
    assert history.status_code == 302 and history["Location"].endswith(f"?app_name={app.name}")
    assert "application/_figures.html" not in page  # the placeholder renders nothing yet


def test_stopped_app_offers_start_only(online, root):
    app = _app(online)
    page = root.get(f"{APPS}{app.pk}/change/").content.decode()
    for env in ("env_a", "env_b"):
        assert _buttons(page, env) == {"start": True, "stop": False, "restart": False}
    assert _buttons(page, None) == {"start": True, "stop": False, "restart": False, "remove": True}
    # The list row too: stop and restart are drawn hidden, for status.js to show when they apply.
    listing = root.get(APPS).content.decode()
    row = re.search(rf'<tr[^>]*>.*?value="{app.pk}".*?</tr>', listing, re.S).group(0)
    assert re.search(r'data-operation="start"[^>]*>start<', row)
    assert re.search(r'data-operation="stop"[^>]* hidden>stop<', row)


def test_operation_on_one_environment_is_confirmed_and_audited(online, root):
    app = _app(online, env_a="running", env_b="running")
    url = f"{APPS}{app.pk}/operation/stop/?back=page&environment=env_a"
    page = root.get(url).content.decode()
    assert "Stop shop on env_a?" in page and "Yes, stop" in page
    assert not AuditEntry.objects.filter(action="stop").exists()  # asking changes nothing
    done = root.post(url, {"confirm": "yes"})
    assert done.status_code == 302 and done["Location"] == f"{APPS}{app.pk}/change/"
    entry = AuditEntry.objects.get(action="stop", app_name="shop")
    assert entry.environments == ["env_a"] and entry.user.username == "root"
    statuses = dict(app.placements.values_list("environment__name", "status"))
    assert statuses == {"env_a": AppStatus.STOPPING, "env_b": AppStatus.RUNNING}


def test_operation_the_state_does_not_offer_is_refused_unchanged(online, root):
    app = _app(online, env_a="running", env_b="stopped")
    # Start on a running placement, stop on a stopped one, an environment it is not on.
    for query in ("operation/start/?environment=env_a", "operation/stop/?environment=env_b"):
        response = root.post(f"{APPS}{app.pk}/{query}&back=page", {"confirm": "yes"}, follow=True)
        assert response.status_code == 200 and "Not done" in response.content.decode()
    response = root.post(f"{APPS}{app.pk}/operation/stop/?environment=env_z", {"confirm": "yes"}, follow=True)
    assert "is not on an environment named 'env_z'" in html.unescape(response.content.decode())
    assert not AuditEntry.objects.filter(action__in=["start", "stop"]).exists()
    # "Start on all" starts where it is stopped only; "restart on all" where it runs.
    root.post(f"{APPS}{app.pk}/operation/start/", {"confirm": "yes"})
    assert AuditEntry.objects.get(action="start").environments == ["env_b"]
    everything_stopped = _app(online, name="idle")
    response = root.post(f"{APPS}{everything_stopped.pk}/operation/stop/", {"confirm": "yes"}, follow=True)
    assert "nothing to stop" in response.content.decode()
    assert not AuditEntry.objects.filter(action="stop").exists()


def test_list_filters_are_kept_across_a_row_operation(online, root):
    app = _app(online)
    listing = root.get(APPS, {"q": "sho", "status": "stopped"}).content.decode()
    link = re.search(r'href="([^"]*/operation/start/[^"]*)"', listing).group(1).replace("&amp;", "&")
    assert "_changelist_filters=" in link
    done = root.post(link, {"confirm": "yes"})
    assert done.status_code == 302
    assert "q=sho" in done["Location"] and "status=stopped" in done["Location"]
    assert AuditEntry.objects.filter(action="start", app_name=app.name).count() == 1


def test_delete_page_warns_when_running_and_can_drop_the_data(online, root):
    app = _app(online, env_a="running")
    page = root.get(f"{APPS}{app.pk}/delete/").content.decode()
    assert "it runs there and is stopped now" in page and 'name="drop_data"' in page
    assert "@" not in re.sub(r"<[^>]+>", "", page.split('id="content"')[1]).split("Yes, delete")[0]  # no "8@1"
    assert root.post(f"{APPS}{app.pk}/delete/", {"post": "yes", "drop_data": "on"}).status_code == 302
    assert AuditEntry.objects.filter(action="delete_with_data", app_name="shop").exists()
    assert not Application.objects.filter(name="shop").exists()


def test_dashboard_counts_environments_apps_queue_and_errors(online, root):
    Environment.objects.create(name="env_c", url="http://127.0.0.1:17000")  # never seen: offline/unknown
    _app(online, name="one", env_a="running", env_b="running")
    broken = _app(online[:1], name="two", env_a="error")
    AppEnvironment.objects.filter(application=broken).update(error="no such table")
    _app(online[1:], name="three")
    AuditEntry.objects.create(app_name="two", action="start", result="error", error="start timed out")
    page = root.get("/admin/").content.decode()
    assert re.search(r'appsup-online" data-status="online">online: 2<', page)
    assert re.search(r'data-status="running">running: 1<', page)
    assert re.search(r'data-status="error">error: 1<', page)
    assert re.search(r'data-status="stopped">stopped: 1<', page)
    assert f'href="{APPS}?status=error"' in page
    assert "Start queue:" in page
    errors = page.split('id="appsup-dash-errors"')[1].split("</table>")[0]
    assert "no such table" in errors and "start timed out" in errors
    assert f'href="{APPS}{broken.pk}/change/"' in errors
    entry = AuditEntry.objects.get(error="start timed out")
    assert f'href="/admin/apps_registry/auditentry/{entry.pk}/change/"' in errors
    assert "Recent requests" in page  # our trail, not Django's "Recent actions"


def test_dashboard_links_queued_starts_to_their_app_and_audit_entry(online, root, django_capture_on_commit_callbacks):
    from apps_registry.control.start_queue import enqueue

    app = _app(online, name="waiting")
    queue = enqueue.get_queue()
    queue.empty()
    try:
        with django_capture_on_commit_callbacks(execute=True):
            request_id = actions.request_start(app, User.objects.get(username="root"))
        page = root.get("/admin/").content.decode()
        entry = AuditEntry.objects.get(request_id=request_id)
        entry_page = root.get(f"/admin/apps_registry/auditentry/{entry.pk}/change/").content.decode()
    finally:
        queue.empty()
    block = page.split('id="appsup-dash-queue"')[1].split("</table>")[0]
    assert '<span class="appsup-queue-depth">1</span> waiting' in block
    assert f'href="{APPS}{app.pk}/change/"' in block
    assert f'href="/admin/apps_registry/auditentry/{entry.pk}/change/"' in block
    assert "/admin/django_rq/dashboard/queues/0/start-waiting-" in block  # the job's page
    # And back: the entry says where its start waits.
    assert "position 1" in entry_page and "start-waiting-" in entry_page


def test_environment_list_figures_are_live(online, root):
    _app(online, name="live_one", env_a="running")
    listing = root.get("/admin/apps_registry/environment/").content.decode()
    row = re.search(r"<tr[^>]*>(?:(?!</tr>).)*env_a(?:(?!</tr>).)*</tr>", listing, re.S).group(0)
    assert "live_one" in row  # from the placements' reports, not the heartbeat's list
    data = root.get(STATUS, {"environments": ",".join(str(e.pk) for e in online)}).json()["environments"]
    env_a = data[str(online[0].pk)]
    assert env_a["status"] == "online" and env_a["running"] == "live_one"
    assert env_a["last_heartbeat"].endswith("s ago")
    assert data[str(online[1].pk)]["running"] == "—"
    # Stopped: gone from the figures on the next poll, no heartbeat needed.
    AppEnvironment.objects.filter(application__name="live_one").update(status=AppStatus.STOPPED)
    data = root.get(STATUS, {"environments": str(online[0].pk)}).json()["environments"]
    assert data[str(online[0].pk)]["running"] == "—"
    # Many: the first eight by name and how many more.
    for i in range(11):
        _app(online[:1], name=f"many_{i:02d}", env_a="running")
    data = root.get(STATUS, {"environments": str(online[0].pk)}).json()["environments"]
    assert data[str(online[0].pk)]["running"] == ", ".join(f"many_{i:02d}" for i in range(8)) + " … (+3)"


def test_status_endpoint_counts_new_applications(online, root):
    first = _app(online, name="first")
    assert root.get(STATUS, {"newer_than": str(first.pk)}).json()["new_apps"] == 0
    _app(online, name="second")
    assert root.get(STATUS, {"newer_than": str(first.pk)}).json()["new_apps"] == 1
    assert "new_apps" not in root.get(STATUS, {"newer_than": "x1"}).json()  # bad input: ignored, no 500
    listing = root.get(APPS).content.decode()
    newest = Application.objects.get(name="second").pk
    assert re.search(rf'id="appsup-new-rows"[^>]*data-newest="{newest}"', listing)


def test_add_form_has_one_start_label(online, root):
    page = root.get(f"{APPS}add/").content.decode()
    labels = re.findall(r"<(?:label|h2)[^>]*>\s*(Start[^<]*?)\s*</(?:label|h2)>", page)
    assert sorted(labels) == ["Start now", "Start:"], labels  # the start mode, and the box; no "Start" fieldset
    assert "Once created" in page


def test_long_names_are_cut_with_their_whole_text_in_the_title(online, root):
    name = "a" * 40
    _app(online, name=name)
    listing = root.get(APPS).content.decode()
    assert f'<span class="appsup-ellipsis" title="{name}">{name}</span>' in listing


def test_dashboard_costs_the_same_queries_whatever_the_fleet(online, root, rf):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from apps_registry.admin import dashboard

    # The dashboard's own reads (the request's middleware, e.g. the config cache's throttled
    # check, comes and goes with time).
    request = rf.get("/admin/")
    request.user = User.objects.get(username="root")

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            dashboard.context(request)
        return len(captured)

    for i in range(3):
        _app(online, name=f"small_{i}", env_a="error")
    few = queries()
    for i in range(30):
        _app(online, name=f"big_{i}", env_a="error", env_b="running")
    assert queries() == few
    assert root.get("/admin/").status_code == 200
