"""Failover decisions in process (registry in the test database, environments' sightings from
their heartbeats, real Redis): which apps move, where to, that they move once, and what is
audited. The cluster test (tests/control/test_failover.py) freezes a real worker."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

import pytest
from django.utils import timezone

from apps_registry.control import failover
from apps_registry.models import AppEnvironment, Application, AuditEntry, Environment
from apps_registry.registry import actions

pytestmark = pytest.mark.django_db
LONG_AGO = dt.timedelta(hours=1)


@pytest.fixture
def envs(redis_conn, settings):
    settings.APP_CONFIG = dataclasses.replace(settings.APP_CONFIG, offline_after=3.0, failover_grace=60.0)
    now = timezone.now()
    return {
        "dead": actions.register_environment(
            name="fo_dead", url="http://127.0.0.1:9", version="1.0", at=now - LONG_AGO
        ),
        "live": actions.register_environment(name="fo_live", url="http://127.0.0.1:9", version="1.0", at=now),
        "busy": actions.register_environment(name="fo_busy", url="http://127.0.0.1:9", version="1.0", at=now),
    }


def running(name: str, on: list[Environment], *, failover_on: bool = True) -> Application:
    app = actions.create_application(name=name, environments=on, failover=failover_on)
    for env in on:
        actions.record_app_status(name, env.name, "running", at=timezone.now())
    return app


def placements(name: str) -> dict[str, str]:
    rows = AppEnvironment.objects.filter(application__name=name).values_list("environment__name", "status")
    return dict(rows)


def test_an_app_that_ran_only_on_a_dead_environment_moves_once_and_is_audited(envs):
    running("fo_crm", [envs["dead"]])
    running("fo_other", [envs["busy"]], failover_on=False)  # fo_busy has more apps: fo_live is chosen
    assert failover.fail_over() == {"fo_crm": "fo_live"}
    assert placements("fo_crm") == {"fo_live": "queued"}  # through the start queue
    entries = list(AuditEntry.objects.filter(app_name="fo_crm", via="failover").order_by("id"))
    assert [(e.action, e.environments) for e in entries] == [
        ("remove", ["fo_dead"]),
        ("set_environments", ["fo_live"]),
        ("start", ["fo_live"]),
        ("failover", ["fo_dead", "fo_live"]),
    ]
    # A second sweep (or a second queue worker) finds nothing left to do.
    assert failover.fail_over() == {}
    assert AuditEntry.objects.filter(app_name="fo_crm", action="failover").count() == 1


def test_apps_that_do_not_qualify_stay_where_they_are(envs):
    running("fo_optout", [envs["dead"]], failover_on=False)
    running("fo_both", [envs["dead"], envs["live"]])  # still runs on an online environment
    actions.create_application(name="fo_idle", environments=[envs["dead"]], failover=True)  # not meant to run
    assert failover.fail_over() == {}
    assert placements("fo_optout") == {"fo_dead": "running"}
    assert set(placements("fo_both")) == {"fo_dead", "fo_live"}
    assert placements("fo_idle") == {"fo_dead": "stopped"}


def test_within_the_grace_or_when_stopped_on_purpose_nothing_moves(envs, settings):
    running("fo_crm", [envs["dead"]])
    settings.APP_CONFIG = dataclasses.replace(settings.APP_CONFIG, failover_grace=2 * 3600.0)
    assert failover.fail_over() == {}
    settings.APP_CONFIG = dataclasses.replace(settings.APP_CONFIG, failover_grace=60.0)
    actions.deregister_environment("fo_dead", at=timezone.now() - LONG_AGO / 2)  # SIGTERM: stopped, not offline
    assert failover.fail_over() == {}
    assert placements("fo_crm") == {"fo_dead": "running"}


def test_only_online_enabled_environments_of_the_same_version_are_targets(envs, caplog):
    caplog.set_level(logging.WARNING, logger="apps_registry.control.failover")
    running("fo_crm", [envs["dead"]])
    actions.set_environment_enabled(envs["live"], False)
    Environment.objects.filter(name="fo_busy").update(version="2.0")
    assert failover.fail_over() == {}
    assert "no online enabled environment with version 1.0" in caplog.text
    Environment.objects.filter(name="fo_busy").update(version="1.0")
    assert failover.fail_over() == {"fo_crm": "fo_busy"}


def test_a_placed_but_stopped_environment_is_preferred_and_started(envs):
    app = running("fo_crm", [envs["dead"]])
    actions.set_application_environments(app, [envs["dead"], envs["busy"]])  # placed, not started there
    AppEnvironment.objects.filter(application=app, environment__name="fo_busy").update(status="stopped")
    assert failover.fail_over() == {"fo_crm": "fo_busy"}
    assert placements("fo_crm") == {"fo_busy": "queued"}


def test_failover_is_chosen_on_the_admin_form_and_through_the_api(envs, admin_client, redis_conn):
    from django.test import Client

    from apps_registry.models import ApiToken
    from tests.support.api import ApiClient
    from tests.support.users import create_user

    app = actions.create_application(name="fo_form", environments=[envs["live"]])
    assert app.failover is False  # off by default
    data = {
        "name": "fo_form",
        "display_name": "fo_form",
        "description": "",
        "target_environments": [envs["live"].pk],
        "modules": [],
        "start_mode": "manual",
        "failover": "on",
    }
    response = admin_client.post(f"/admin/apps_registry/application/{app.pk}/change/", data, follow=True)
    assert response.status_code == 200
    assert Application.objects.get(pk=app.pk).failover is True
    document = Client().get("/api/v1/openapi.json").json()
    _token, raw = ApiToken.issue(create_user("foroot", superuser=True))
    api = ApiClient(raw, document=document)
    status, body = api.call("PATCH", "/api/v1/apps/fo_form", "/apps/{name}", body={"failover": False})
    assert (status, body["failover"]) == (200, False), body
    status, body = api.call("PATCH", "/api/v1/apps/fo_form", "/apps/{name}", body={"failover": "yes"})
    assert status == 400  # strictly a boolean
    assert Application.objects.get(pk=app.pk).failover is False
