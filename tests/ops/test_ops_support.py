"""The shared test helpers hold what they promise: the named users (tests/support/users.py)
have exactly their permissions, and one ApiClient (tests/support/api.py) serves every user,
checked against the served OpenAPI document (in process: real PostgreSQL and Redis)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from apps_registry.models import Environment
from tests.support import users
from tests.support.api import ApiClient

pytestmark = pytest.mark.django_db


@pytest.fixture
def document() -> dict:
    return Client().get("/api/v1/openapi.json").json()


def test_named_users_have_exactly_their_permissions(operator, staff_no_perms, viewer):
    every = set(Permission.objects.filter(content_type__app_label="apps_registry"))
    assert set(operator.user_permissions.all()) == every and not operator.is_superuser
    assert not staff_no_perms.user_permissions.exists()
    assert {p.codename for p in viewer.user_permissions.all()} == {
        p.codename for p in every if p.codename.startswith("view_")
    }
    for user in (operator, staff_no_perms, viewer):
        assert user.is_staff and user.check_password(users.PASSWORD)
        assert Client().login(username=user.username, password=users.PASSWORD)


def test_one_api_client_for_every_user(operator, staff_no_perms, viewer, document, api_for):
    Environment.objects.create(name="env_a", url="http://127.0.0.1:9")
    body = {"name": "shop", "environments": ["env_a"], "modules": ["contacts"]}
    operator_api = api_for(operator, document=document)
    assert operator_api.post("/api/v1/apps", body, template="/apps")[0] == 201
    viewer_api = ApiClient.for_user(viewer, document=document)
    status, payload = viewer_api.get("/api/v1/apps/shop", template="/apps/{name}")
    assert status == 200 and payload["name"] == "shop"
    assert viewer_api.post("/api/v1/apps/shop/stop", template="/apps/{name}/stop")[0] == 403
    assert api_for(staff_no_perms).get("/api/v1/apps")[0] == 403
    assert ApiClient("not-a-token").get("/api/v1/apps")[0] == 401
    assert operator_api.delete("/api/v1/apps/shop", template="/apps/{name}")[0] in (202, 204)


def test_wait_until_says_what_it_last_saw_when_it_times_out():
    from tests.support.processes import wait_until

    pending = iter([[3], [2], []])
    with pytest.raises(AssertionError, match=r"waiting for no jobs \(last value: \[\]\)"):
        wait_until(lambda: not next(pending, []) and [], timeout=0.05, message="no jobs")
    with pytest.raises(AssertionError, match=r"waiting for a status \(last value: ''\)"):
        wait_until(lambda: "", timeout=0.05, message="a status")
