"""The admin's wording (issue 15, item 9): plurals, human action labels with the stored names
kept, environments as a list, the rule on Name, search by environment, case-insensitive order."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from apps_registry.admin.audit import action_label
from apps_registry.models import AuditEntry, Environment
from apps_registry.names import NAME_RULE
from apps_registry.registry import actions

pytestmark = pytest.mark.django_db
APPS = "/admin/apps_registry/application/"


@pytest.fixture
def client(operator) -> Client:
    signed_in = Client()
    signed_in.force_login(operator)
    return signed_in


@pytest.fixture
def placed():
    env_a = Environment.objects.create(name="env_a", url="http://127.0.0.1:15000")
    env_b = Environment.objects.create(name="env_b", url="http://127.0.0.1:16000")
    opts = {"modules": ["contacts"]}
    return [
        actions.create_application(name="zeta", display_name="apple", environments=[env_a], options=opts),
        actions.create_application(name="alpha", display_name="Zebra", environments=[env_b], options=opts),
        actions.create_application(name="mid", display_name="Banana", environments=[env_a], options=opts),
    ]


def test_action_names_read_as_labels():
    assert action_label("environment_registered") == "Environment registered"
    assert action_label("set_environments") == "Environments changed"
    assert action_label("start") == "Start"


def test_audit_list_shows_labels_keeps_the_stored_names_and_lists_environments(client, placed):
    AuditEntry.objects.create(action="set_environments", app_name="zeta", environments=["env_a", "env_b"])
    page = client.get("/admin/apps_registry/auditentry/").content.decode()
    assert "Environments changed" in page and ">set_environments<" not in page
    filtered = client.get("/admin/apps_registry/auditentry/?action=set_environments").content.decode()
    assert "Environments changed" in filtered  # the filter still works on the stored value
    entry = AuditEntry.objects.get(action="set_environments")
    detail = client.get(f"/admin/apps_registry/auditentry/{entry.pk}/change/").content.decode()
    assert "env_a, env_b" in detail and '["env_a", "env_b"]' not in detail


def test_confirmation_and_message_say_applications_not_application_s(client, placed):
    data = {"action": "stop_applications", "_selected_action": [placed[0].pk, placed[1].pk]}
    asked = client.post(APPS, data).content.decode()
    assert "Stop 2 applications?" in asked and "(s)" not in asked
    done = client.post(APPS, {**data, "confirm": "yes"}, follow=True).content.decode()
    assert "2 applications:" in done and "(s)" not in done
    one = client.post(APPS, {"action": "stop_applications", "_selected_action": [placed[0].pk]}).content.decode()
    assert "Stop 1 application?" in one


def test_name_says_its_rule_before_anyone_types(client):
    page = client.get(f"{APPS}add/").content.decode()
    assert NAME_RULE in page


def test_search_by_environment_and_case_insensitive_display_name_order(client, placed):
    found = client.get(APPS, {"q": "env_b"}).content.decode()
    assert ">alpha<" in found and ">zeta<" not in found and ">mid<" not in found
    # Ordered by the display name column (the second), ascending.
    listing = client.get(APPS, {"o": "2"}).content.decode()
    order = [name for name in re.findall(r">(apple|Banana|Zebra)<", listing)]
    assert order == ["apple", "Banana", "Zebra"]


def test_one_date_format_and_the_audit_count_reads_well(client, placed):
    import datetime as dt

    from apps_registry.admin.audit import recent_history

    AuditEntry.objects.update(at=dt.datetime(2026, 12, 1, 14, 55, 7, tzinfo=dt.UTC))
    listing = client.get("/admin/apps_registry/auditentry/").content.decode()
    count = AuditEntry.objects.count()
    assert f"{count} audit entries" in listing and "audit trail<" not in listing
    assert "2026-12-01 14:55:07" in listing and "Dec. 1, 2026" not in listing
    assert "2026-12-01 14:55:07" in recent_history(placed[0])


def test_the_queue_dashboard_is_named_as_operators_know_it(db):
    from django.contrib.auth import get_user_model

    root = get_user_model().objects.create_superuser("wording_root", "root@example.com", "pw")
    signed_in = Client()
    signed_in.force_login(root)
    page = signed_in.get("/admin/").content.decode()
    assert "Start queue" in page and "Queue dashboard" in page
    assert "Django-RQ" not in page and "Django_Rq" not in page and "DJANGO_RQ" not in page
