"""Pages users meet: an app an operator stopped says so (no "try again in a moment"), pages of
a transition reload themselves as Retry-After says, unknown admin URLs answer inside the admin,
and no "View site" leads to a bare 404."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client, RequestFactory

from apps_registry.proxy import pages
from apps_registry.proxy.routing import AppRoute

pytestmark = pytest.mark.django_db
ROUTE = AppRoute(pk=1, name="hr", display_name="Human resources", options={})


def _refresh(body: str) -> str | None:
    found = re.search(r'<meta http-equiv="refresh" content="(\d+)">', body)
    return found.group(1) if found else None


def test_a_stopped_app_says_an_operator_stopped_it_and_does_not_reload():
    response = pages.unavailable(RequestFactory().get("/apps/hr/"), ROUTE, "stopped", 30)
    body = response.content.decode()
    assert response.status_code == 503 and response["Retry-After"] == "30"
    assert "Human resources is stopped. It was stopped by an operator" in body
    assert "Try again" not in body
    assert _refresh(body) is None


@pytest.mark.parametrize("status", ["queued", "starting", "stopping"])
def test_pages_of_a_transition_reload_themselves_after_retry_after(status):
    response = pages.unavailable(RequestFactory().get("/apps/hr/"), ROUTE, status, 5)
    body = response.content.decode()
    assert response["Retry-After"] == "5" and _refresh(body) == "5"
    assert "this page reloads itself" in body


def test_busy_reloads_itself_and_json_clients_get_no_html():
    assert _refresh(pages.busy(RequestFactory().get("/apps/hr/"), ROUTE, 2).content.decode()) == "2"
    data = pages.unavailable(RequestFactory().get("/apps/hr/", HTTP_ACCEPT="application/json"), ROUTE, "stopped", 30)
    detail = json.loads(data.content)
    assert detail["app_status"] == "stopped" and "stopped by an operator" in detail["detail"]


def test_unknown_admin_urls_are_an_admin_page_and_view_site_is_gone(operator):
    client = Client()
    client.force_login(operator)
    missing = client.get("/admin/no/such/page/")
    body = missing.content.decode()
    assert missing.status_code == 404
    assert 'id="site-name"' in body and "Page not found" in body and "/admin/no/such/page/" in body
    assert 'href="/admin/"' in body
    index = client.get("/admin/").content.decode()
    assert "View site" not in index
    # Outside the admin Django's own 404 stays, and the API keeps its JSON one.
    assert 'id="site-name"' not in Client().get("/nothing-here").content.decode()
    assert Client().get("/api/v1/nothing").headers["Content-Type"].startswith("application/json")


ROUTE_FOR_HR: list[AppRoute] = []


@pytest.fixture
def hr_app():
    from apps_registry.models import Environment
    from apps_registry.registry import actions

    env = Environment.objects.create(name="env_a", url="http://127.0.0.1:15000")
    app = actions.create_application(name="hr", environments=[env], options={"modules": ["contacts"]})
    ROUTE_FOR_HR[:] = [AppRoute(pk=app.pk, name="hr", display_name="Human resources", options={})]
    return app


def test_a_stopped_app_links_operators_to_the_admins_start_which_confirms_then_starts(hr_app, operator, viewer):
    from apps_registry.models import AuditEntry

    page = pages.unavailable(RequestFactory().get("/apps/hr/"), ROUTE_FOR_HR[0], "stopped", 30).content.decode()
    link = re.search(r'<a class="button" href="([^"]+)">Start Human resources…</a>', page).group(1)
    assert link == f"/admin/apps_registry/application/{hr_app.pk}/operation/start/"
    queued = pages.unavailable(RequestFactory().get("/apps/hr/"), ROUTE_FOR_HR[0], "queued", 5).content.decode()
    assert link not in queued
    # Nobody signed in: the admin's sign-in; signed in without the permission: refused.
    assert Client().get(link).status_code == 302
    no_perm = Client()
    no_perm.force_login(viewer)
    assert no_perm.post(link, {"confirm": "yes"}).status_code == 403
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    asked = client.get(link)
    assert asked.status_code == 200 and "Yes, start" in asked.content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', asked.content.decode()).group(1)
    assert client.post(link, {"confirm": "yes"}).status_code == 403  # no CSRF token: refused
    assert not AuditEntry.objects.filter(action="start", app_name="hr").exists()
    assert client.post(link, {"confirm": "yes", "csrfmiddlewaretoken": token}).status_code == 302
    assert AuditEntry.objects.filter(action="start", app_name="hr", user=operator).exists()


def test_with_per_app_origins_no_start_link(hr_app, settings):
    import dataclasses

    settings.APP_CONFIG = dataclasses.replace(settings.APP_CONFIG, apps_domain="apps.example")
    page = pages.unavailable(RequestFactory().get("/"), ROUTE_FOR_HR[0], "stopped", 30).content.decode()
    assert "operation/start" not in page and "stopped by an operator" in page
