"""Disable, enable and forget environments in the admin: a confirmation page listing the apps
placed there first, never a forget of an online environment, and an audit entry that says
which placements a forget removed."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from apps_registry.models import AppEnvironment, Application, AppStatus, AuditEntry, Environment
from apps_registry.registry import actions

pytestmark = pytest.mark.django_db

ENVS_URL = "/admin/apps_registry/environment/"
LONG_AGO = dt.timedelta(days=1)


@pytest.fixture
def envs(redis_conn):
    """env_on online (its beat just now), env_off offline (a day ago); shop runs on both, crm on env_off."""
    now = timezone.now()
    on = Environment.objects.create(name="env_on", url="http://127.0.0.1:15000", last_heartbeat=now)
    off = Environment.objects.create(name="env_off", url="http://127.0.0.1:16000", last_heartbeat=now - LONG_AGO)
    shop = actions.create_application(name="shop", environments=[on, off], options={"modules": []})
    actions.create_application(name="crm", environments=[off], options={"modules": []})
    AppEnvironment.objects.filter(application=shop).update(status=AppStatus.RUNNING, desired_running=True)
    return on, off


def _action(client, action: str, envs, **extra):
    data = {"action": action, "_selected_action": [env.pk for env in envs], **extra}
    return client.post(ENVS_URL, data, follow=True)


@pytest.mark.parametrize("action", ["forget_environments", "disable_environments", "enable_environments"])
def test_each_action_asks_first_and_lists_what_it_affects(admin_client, envs, action):
    on, off = envs
    target = [off] if action == "forget_environments" else [on, off]
    page = _action(admin_client, action, target).content.decode()
    assert "Yes, " in page and "No, take me back" in page
    assert "shop (running)" in page and "crm (stopped)" in page
    # Nothing happened yet.
    assert Environment.objects.count() == 2 and all(Environment.objects.values_list("enabled", flat=True))
    # (The shared cluster's workers commit registrations of their own: only operators' actions count.)
    operator_actions = ("environment_forgotten", "environment_disabled", "environment_enabled")
    assert not AuditEntry.objects.filter(action__in=operator_actions).exists()


def test_forget_of_an_online_environment_is_refused(admin_client, envs):
    on, _off = envs
    for extra in ({}, {"confirm": "yes"}):
        page = _action(admin_client, "forget_environments", [on], **extra).content.decode()
        assert "Not forgotten: env_on is online" in page and "Disable it" in page
    assert Environment.objects.filter(name="env_on").exists()
    assert AppEnvironment.objects.filter(environment=on).count() == 1
    # The detail page's delete is the same forget, under the same rule.
    page = admin_client.get(f"{ENVS_URL}{on.pk}/delete/", follow=True).content.decode()
    assert "Not forgotten: env_on is online" in page
    admin_client.post(f"{ENVS_URL}{on.pk}/delete/", {"post": "yes", "confirm": "yes"})
    assert Environment.objects.filter(name="env_on").exists()
    assert not AuditEntry.objects.filter(action="environment_forgotten").exists()


def test_forget_of_an_environment_of_unknown_status_is_refused(admin_client, envs, settings):
    """A beat or two missed: it may well be serving still."""
    _on, off = envs
    config = settings.APP_CONFIG
    assert 2 * config.lease_interval < config.offline_after
    ago = dt.timedelta(seconds=(2 * config.lease_interval + config.offline_after) / 2)
    Environment.objects.filter(pk=off.pk).update(last_heartbeat=timezone.now() - ago)
    page = _action(admin_client, "forget_environments", [off], confirm="yes").content.decode()
    assert "Not forgotten: env_off is unknown" in page
    assert Environment.objects.filter(name="env_off").exists()


def test_forget_records_the_placements_it_removed(admin_client, envs):
    on, off = envs
    page = _action(admin_client, "forget_environments", [off], confirm="yes").content.decode()
    assert "Forgot 1 environment: env_off. Placements removed: crm, shop." in page
    assert not Environment.objects.filter(name="env_off").exists()
    entry = AuditEntry.objects.get(action="environment_forgotten")
    assert entry.environments == ["env_off"] and entry.user.username == "admin"
    assert entry.error == "placements removed: crm (stopped), shop (running)"
    assert sorted(
        AuditEntry.objects.filter(action="placement_forgotten", environments=["env_off"]).values_list(
            "app_name", flat=True
        )
    ) == ["crm", "shop"]
    assert list(Application.objects.get(name="shop").placements.values_list("environment__name", flat=True)) == [
        "env_on"
    ]


def test_disable_after_confirmation(admin_client, envs):
    on, _off = envs
    page = _action(admin_client, "disable_environments", [on], confirm="yes").content.decode()
    assert "Disabled 1 environment: env_on." in page
    assert not Environment.objects.get(name="env_on").enabled
    assert AuditEntry.objects.filter(action="environment_disabled", environments=["env_on"]).exists()
