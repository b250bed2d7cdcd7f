"""Backups in the admin: the app page's block (last verified restore, backups, buttons), "Back
up now" and "Restore…" behind confirmation pages and their permissions, a clone's name checked,
the list's flag for an app whose newest backup is not proven restorable."""

from __future__ import annotations

import pytest
from django.test import Client

from apps_registry.models import AuditEntry, Backup, Environment, Job
from apps_registry.registry import actions
from tests.support.users import PASSWORD, create_user

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/apps_registry/application/"


@pytest.fixture
def app():
    env = Environment.objects.create(name="env_a", url="http://127.0.0.1:15000")
    return actions.create_application(name="crm", environments=[env], options={"modules": ["contacts"]})


def _signed_in(user) -> Client:
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client


def _finished_backup(app) -> Backup:
    backup, job = actions.request_backup(app)
    actions.backup_succeeded(backup.pk, vendor="postgresql", size=2048, checksum="ab" * 32, duration=0.5, manifest={})
    return Backup.objects.get(pk=backup.pk)


def test_back_up_now_behind_a_confirmation(app):
    client = _signed_in(create_user("root", superuser=True))
    page = client.get(f"{CHANGELIST}{app.pk}/change/").content.decode()
    assert "Last verified restore: <strong>never</strong>" in page and "No backups yet." in page
    url = f"{CHANGELIST}{app.pk}/backups/new/"
    assert f'href="{url}"' in page
    confirm = client.get(url)
    assert confirm.status_code == 200 and "Back up crm now?" in confirm.content.decode()
    assert not Backup.objects.exists()  # a GET changes nothing
    response = client.post(url, {"confirm": "yes"})
    assert response.status_code == 302
    backup = Backup.objects.get()
    assert backup.status == "queued" and backup.job.kind == "backup"
    assert AuditEntry.objects.filter(action="backup_requested", app_name="crm", user__username="root").exists()


def test_restore_and_clone_behind_a_confirmation(app):
    backup = _finished_backup(app)
    client = _signed_in(create_user("root", superuser=True))
    page = client.get(f"{CHANGELIST}{app.pk}/change/").content.decode()
    url = f"{CHANGELIST}{app.pk}/backups/{backup.pk}/restore/"
    assert f'href="{url}"' in page and "2.0\xa0KB" in page and "⚠ latest backup never verified" in page
    confirm = client.get(url).content.decode()
    assert "never verified by a restore drill" in confirm and 'name="as"' in confirm

    assert client.post(url, {"confirm": "yes", "as": "Bad Name"}).status_code == 200
    assert client.post(url, {"confirm": "yes", "as": "crm"}).status_code == 200  # taken
    assert not Job.objects.filter(kind__in=("restore", "clone")).exists()

    assert client.post(url, {"confirm": "yes"}).status_code == 302
    assert Job.objects.get(kind="restore").params == {"backup": str(backup.pk)}
    assert client.post(url, {"confirm": "yes", "as": "crm_copy"}).status_code == 302
    clone = Job.objects.get(kind="clone")
    assert clone.app_name == "crm_copy" and clone.application.placements.get().environment.name == "env_a"
    assert "database" not in clone.application.options


def test_permissions_are_checked(app):
    backup = _finished_backup(app)
    viewer = _signed_in(create_user("looker", ["view_application", "view_backup"]))
    assert viewer.get(f"{CHANGELIST}{app.pk}/backups/new/").status_code == 403
    assert viewer.post(f"{CHANGELIST}{app.pk}/backups/{backup.pk}/restore/", {"confirm": "yes"}).status_code == 403
    backer = _signed_in(create_user("backer", ["view_application", "add_backup", "restore_backup"]))
    # May restore, not clone: no name field, and a posted name is refused.
    page = backer.get(f"{CHANGELIST}{app.pk}/backups/{backup.pk}/restore/").content.decode()
    assert 'name="as"' not in page
    assert backer.post(f"{CHANGELIST}{app.pk}/backups/{backup.pk}/restore/", {"confirm": "yes", "as": "x1"})
    assert not Job.objects.filter(kind="clone").exists()


def test_the_list_flags_apps_without_a_proven_backup(app):
    client = _signed_in(create_user("root", superuser=True))
    assert "⚠ no backup" in client.get(CHANGELIST).content.decode()
    backup = _finished_backup(app)
    assert "⚠ latest backup never verified" in client.get(CHANGELIST).content.decode()
    actions.record_drill(backup.pk, error="check: row counts differ")
    assert "⚠ latest backup failed its restore drill" in client.get(CHANGELIST).content.decode()
    actions.record_drill(backup.pk)
    listed = client.get(CHANGELIST).content.decode()
    assert "⚠" not in listed and "verified 20" in listed


def test_the_form_sets_and_clears_the_apps_own_backup_policy(app):
    from apps_registry.control.backups import policy

    client = _signed_in(create_user("root", superuser=True))
    env = Environment.objects.get(name="env_a")
    form = {
        "display_name": "crm",
        "description": "",
        "domain": "",
        "target_environments": [env.pk],
        "modules": ["contacts"],
        "start_mode": "manual",
        "backup_interval_hours": "6",
        "backup_keep": "30",
    }
    assert client.post(f"{CHANGELIST}{app.pk}/change/", form).status_code == 302
    app.refresh_from_db()
    assert app.options["backups"] == {"interval": 21600, "keep": 30}
    assert policy.interval_for(app) == 21600 and policy.keep_for(app) == 30
    page = client.get(f"{CHANGELIST}{app.pk}/change/").content.decode()
    assert 'name="backup_keep" value="30"' in page
    assert client.post(f"{CHANGELIST}{app.pk}/change/", {**form, "backup_keep": "0"}).status_code == 200  # refused
    form.update(backup_interval_hours="", backup_keep="")
    assert client.post(f"{CHANGELIST}{app.pk}/change/", form).status_code == 302
    app.refresh_from_db()
    assert "backups" not in app.options and policy.keep_for(app) == policy.settings.APP_CONFIG.backup_keep
