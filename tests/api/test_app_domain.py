"""An app's custom domain and the host names of per-app origins: the rules (apps_registry.names,
APPS_DOMAIN in config), the API's POST and PATCH, the admin form, the AppSpec. Serving by Host
is tested with real processes in tests/proxy/test_app_hosts.py."""

from __future__ import annotations

import dataclasses

import pytest
from django.test import Client

from apps_registry.control import specs
from apps_registry.models import Application, AuditEntry, Environment, validate_app_name
from apps_registry.names import host_label, host_problem, name_from_label
from apps_registry.registry import actions
from supervisor_site.config import ConfigError, load
from tests.support.api import ApiClient
from tests.support.users import create_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def env():
    return Environment.objects.create(name="env_a", url="http://127.0.0.1:15000")


@pytest.fixture
def api():
    from apps_registry.models import ApiToken

    document = Client().get("/api/v1/openapi.json").json()
    _token, raw = ApiToken.issue(create_user("root", superuser=True))
    return ApiClient(raw, document=document)


@pytest.fixture
def per_app_origins(settings):
    """APPS_DOMAIN and a supervisor host of its own, as a deployment would have them."""
    settings.APP_CONFIG = dataclasses.replace(
        settings.APP_CONFIG, apps_domain="apps.example.com", allowed_hosts=["admin.example.com", ".apps.example.com"]
    )


@pytest.mark.parametrize("name", ["crm", "sales_eu", "a1_b2_c3", "x" * 40])
def test_host_labels_map_app_names_one_to_one(name):
    validate_app_name(name)
    label = host_label(name)
    assert "_" not in label and not host_problem(f"{label}.apps.example.com")
    assert name_from_label(label) == name


@pytest.mark.parametrize("label", ["sales_eu", "Sales", "-x", "1abc", "", "a" * 41])
def test_labels_no_app_name_maps_to(label):
    assert name_from_label(label) is None


def test_apps_domain_is_a_host_name_and_joins_allowed_hosts(tmp_path):
    base = {"SECRET_KEY": "k", "APP_MODE": "supervisor", "APP_SUPERVISOR_REDIS_URL": "redis://127.0.0.1:6379/0"}
    config = load({**base, "APPS_DOMAIN": "Apps.Example.com", "ALLOWED_HOSTS": "admin.example.com"}, tmp_path)
    assert config.apps_domain == "apps.example.com"
    assert config.allowed_hosts == ["admin.example.com", ".apps.example.com"]
    assert load(base, tmp_path).apps_domain == ""
    for bad in ("https://apps.example.com", "apps.example.com:8000", "apps_x.example.com", "localhost", "10.0.0.1"):
        with pytest.raises(ConfigError, match="APPS_DOMAIN"):
            load({**base, "APPS_DOMAIN": bad}, tmp_path)
    with pytest.raises(ConfigError, match="APPS_DOMAIN needs APP_MODE=supervisor"):
        load({"SECRET_KEY": "k", "APPS_DOMAIN": "apps.example.com"}, tmp_path)


def test_create_with_a_domain_normalised_unique_and_in_the_spec(api, env, per_app_origins):
    status, body = api.call(
        "POST", "/api/v1/apps", "/apps", {"name": "crm", "environments": ["env_a"], "domain": " CRM.Example.org "}
    )
    assert status == 201, body
    assert body["domain"] == "crm.example.org"
    app = Application.objects.get(name="crm")
    assert app.domain == "crm.example.org"
    assert specs.app_spec(specs.applications().get(pk=app.pk))["domain"] == "crm.example.org"
    status, body = api.call(
        "POST", "/api/v1/apps", "/apps", {"name": "shop", "environments": ["env_a"], "domain": "crm.example.org"}
    )
    assert status == 409 and "domain" in body["error"], body
    status, body = api.call("POST", "/api/v1/apps", "/apps", {"name": "shop", "environments": ["env_a"]})
    assert status == 201 and body["domain"] is None
    assert specs.app_spec(specs.applications().get(name="shop"))["domain"] is None


@pytest.mark.parametrize(
    "domain",
    [
        "not a host",
        "localhost",
        "10.0.0.1",
        "a_b.example.org",
        "crm.example.org:8000",
        "https://crm.example.org",
        "-x.example.org",
        "crm.apps.example.com",  # under APPS_DOMAIN: the apps' own names
        "apps.example.com",
        "admin.example.com",  # the supervisor's own host
        "x" * 64 + ".example.org",
        7,
    ],
)
def test_bad_domains_are_400_naming_the_field(api, env, per_app_origins, domain):
    status, body = api.call(
        "POST", "/api/v1/apps", "/apps", {"name": "crm", "environments": ["env_a"], "domain": domain}
    )
    assert status == 400, body
    assert "domain" in body["errors"], body
    assert not Application.objects.filter(name="crm").exists()


def test_patch_sets_changes_and_removes_the_domain(api, env, per_app_origins):
    actions.create_application(name="crm", environments=[env], via="test")
    actions.create_application(name="shop", environments=[env], domain="shop.example.org", via="test")
    status, body = api.call("PATCH", "/api/v1/apps/crm", "/apps/{name}", {"domain": "CRM.example.org"})
    assert status == 200 and body["domain"] == "crm.example.org", body
    assert AuditEntry.objects.filter(app_name="crm", action="update", via="api").exists()
    status, body = api.call("PATCH", "/api/v1/apps/crm", "/apps/{name}", {"domain": "shop.example.org"})
    assert status == 409 and "domain" in body["error"], body
    status, body = api.call("PATCH", "/api/v1/apps/crm", "/apps/{name}", {"domain": "crm.apps.example.com"})
    assert status == 400 and "domain" in body["errors"]
    assert Application.objects.get(name="crm").domain == "crm.example.org"
    status, body = api.call("PATCH", "/api/v1/apps/crm", "/apps/{name}", {"domain": ""})
    assert status == 200 and body["domain"] is None
    assert Application.objects.get(name="crm").domain is None


def test_the_admin_form_edits_the_domain(env, per_app_origins):
    from apps_registry.admin.forms import ApplicationForm

    app = actions.create_application(name="crm", environments=[env], via="test")
    data = {"name": "crm", "display_name": "CRM", "description": "", "target_environments": [env.pk]}
    data.update(modules=[], start_mode="manual")
    form = ApplicationForm(data={**data, "domain": " CRM.example.org"}, instance=app)
    assert form.is_valid(), form.errors
    assert form.cleaned_data["domain"] == "crm.example.org"
    form = ApplicationForm(data={**data, "domain": "crm.apps.example.com"}, instance=app)
    assert not form.is_valid() and "APPS_DOMAIN" in str(form.errors["domain"])
    form = ApplicationForm(data={**data, "domain": ""}, instance=app)
    assert form.is_valid(), form.errors
    assert form.cleaned_data["domain"] is None

    client = Client()
    client.force_login(create_user("boss", superuser=True))
    page = client.get(f"/admin/apps_registry/application/{app.pk}/change/")
    assert page.status_code == 200 and b'name="domain"' in page.content
