"""The supervisor's host router (apps_registry/proxy/hosts.py) in process: which Host is an
app's, the supervisor's, or neither, and what APP_HTTPS adds on app hosts. What the browser
gets through it from a real worker is tested in test_app_hosts.py."""

from __future__ import annotations

import dataclasses
import json

import pytest
from django.http import HttpResponse

from apps_registry.models import Environment
from apps_registry.proxy import routing
from apps_registry.proxy.hosts import AppHostMiddleware, app_named_by
from apps_registry.registry import actions

pytestmark = pytest.mark.django_db


@pytest.fixture
def router(settings):
    settings.APP_CONFIG = dataclasses.replace(
        settings.APP_CONFIG,
        apps_domain="apps.example.com",
        allowed_hosts=["admin.example.com", ".apps.example.com"],
        proxy_route_cache_seconds=0.0,
    )
    routing._domains.clear()
    return AppHostMiddleware(lambda request: HttpResponse("the supervisor's own"))


@pytest.mark.parametrize(
    ("domain", "name"),
    [
        ("crm.apps.example.com", "crm"),
        ("sales-eu.apps.example.com", "sales_eu"),
        ("apps.example.com", None),
        ("a.crm.apps.example.com", None),
        ("-x.apps.example.com", None),
    ],
)
def test_app_named_by_its_label(domain, name):
    assert app_named_by(domain, "apps.example.com") == name


def test_the_supervisors_hosts_pass_and_app_hosts_do_not(router, rf):
    for host in ("admin.example.com", "admin.example.com:8443"):
        assert router(rf.get("/admin/", HTTP_HOST=host)).content == b"the supervisor's own"
    for host in ("apps.example.com", "nope.apps.example.com", "x.crm.apps.example.com:8000"):
        response = router(rf.get("/admin/", HTTP_HOST=host, HTTP_ACCEPT="application/json"))
        assert response.status_code == 404, host
        assert response["X-Frame-Options"] == "DENY" and response["X-Content-Type-Options"] == "nosniff"
    # Neither an app's nor ours: left to Django's host check (400 with these ALLOWED_HOSTS).
    assert router(rf.get("/admin/", HTTP_HOST="elsewhere.example.org")).content == b"the supervisor's own"


def test_a_custom_domain_is_looked_up_in_the_registry(router, rf):
    env = Environment.objects.create(name="env_a", url="http://127.0.0.1:9")
    actions.create_application(name="crm", environments=[env], domain="crm.example.org", via="test")
    response = router(rf.get("/admin/", HTTP_HOST="crm.example.org", HTTP_ACCEPT="application/json"))
    # The app's (stopped, so the proxy's 503), not the supervisor's admin.
    assert response.status_code == 503 and b"crm" in response.content
    response = router(rf.get("/admin/", HTTP_HOST="CRM.example.org:443", HTTP_ACCEPT="application/json"))
    assert response.status_code == 503


def test_app_https_redirects_app_hosts_and_sends_hsts_for_that_host_only(router, rf, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    response = router(rf.get("/admin/?next=/x", HTTP_HOST="crm.apps.example.com"))
    assert response.status_code == 301
    assert response["Location"] == "https://crm.apps.example.com/admin/?next=/x"
    response = router(rf.get("/admin/", HTTP_HOST="nope.apps.example.com", secure=True))
    assert response.status_code == 404
    assert response["Strict-Transport-Security"] == "max-age=3600"


def test_paths_an_app_host_refuses(router, rf):
    env = Environment.objects.create(name="env_a", url="http://127.0.0.1:9")
    actions.create_application(name="crm", environments=[env], via="test")
    host = {"HTTP_HOST": "crm.apps.example.com", "HTTP_ACCEPT": "application/json"}
    assert router(rf.get("/admin/", **host)).status_code == 503  # the app's (stopped)
    for path, raw in (("/a/../admin/", None), ("/a//b", None), ("/x/y", "/x%2fy"), ("/x\\y", None)):
        extra = {"RAW_URI": raw} if raw else {}
        response = router(rf.get(path, **host, **extra))
        assert response.status_code == 404, path
        assert json.loads(response.content)["error"] == "Application not found", path
