"""The start queue's RQ dashboard: only users with django-rq's "Access admin page" permission;
a staff user without it gets 403 on every one of its pages (it could empty the queue)."""

from __future__ import annotations

import re

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import URLPattern
from django_rq.models import Dashboard

from apps_registry.control.start_queue import enqueue
from tests.support.users import create_user

pytestmark = pytest.mark.django_db

BASE = "/admin/django_rq/dashboard/"
SAMPLES = {"queue_index": "0", "scheduler_index": "0", "job_id": "start-x-1-0", "key": "w"}


def dashboard_paths() -> list[str]:
    """Every page of the dashboard, its parameters filled in."""
    paths = set()
    for pattern in admin.site._registry[Dashboard].get_urls():
        assert isinstance(pattern, URLPattern)
        route = str(pattern.pattern).lstrip("^").rstrip("$")
        route = re.sub(r"\(\?P<(\w+)>[^)]*\)\?", "", route)  # optional regex groups left out
        route = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: SAMPLES.get(m.group(1), "x"), route)
        paths.add(BASE + route.replace("/?", "/").replace("\\", ""))
    return sorted(paths)


def test_every_dashboard_page_is_403_for_staff_without_the_permission(redis_conn):
    paths = dashboard_paths()
    assert len(paths) > 15 and f"{BASE}queues/0/empty/" in paths
    enqueue.get_queue().empty()
    browser = Client()
    browser.force_login(create_user("staff_no_perms"))
    for path in paths:
        assert browser.get(path).status_code == 403, path
        assert browser.post(path).status_code == 403, path
    assert b"App supervisor" not in browser.get("/admin/").content or b"Django-RQ" not in browser.get("/admin/").content


def test_the_permission_opens_the_dashboard(redis_conn):
    user = create_user("queue_keeper")
    user.user_permissions.add(Permission.objects.get(codename="admin", content_type__app_label="django_rq"))
    browser = Client()
    browser.force_login(user)
    assert browser.get(BASE).status_code == 200
    assert browser.get(f"{BASE}queues/0/").status_code == 200


def test_changes_made_from_the_dashboard_are_audited(redis_conn):
    from apps_registry.models import AuditEntry

    enqueue.enqueue_start("audited_app", ["env_a"], generation=1, request_id="r-1")
    user = create_user("queue_keeper")
    user.user_permissions.add(Permission.objects.get(codename="admin", content_type__app_label="django_rq"))
    browser = Client()
    browser.force_login(user)
    assert browser.post(f"{BASE}queues/0/empty/").status_code < 400
    assert enqueue.get_queue().count == 0
    entry = AuditEntry.objects.get(action="queue_dashboard_change")
    assert (entry.user, entry.error) == (user, f"{BASE}queues/0/empty/")
    assert not AuditEntry.objects.filter(action="queue_dashboard_change").exclude(pk=entry.pk).exists()
    browser.get(f"{BASE}queues/0/")  # reading is not a change
    assert AuditEntry.objects.filter(action="queue_dashboard_change").count() == 1
