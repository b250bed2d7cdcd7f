"""Moves and drains without real processes: the requests' refusals (nothing changes), the
registry's switch and roll back, what the proxy makes of a placement held out of the route,
and the admin's pages. The moves themselves run on the real cluster (test_move_cluster.py)."""

from __future__ import annotations

import pytest
from django.test import Client

from apps_registry.models import ApiToken, AppEnvironment, AppStatus, Environment, Job, JobStatus
from apps_registry.proxy import routing
from apps_registry.registry import actions, moves
from tests.support.api import ApiClient
from tests.support.users import create_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def api():
    document = Client().get("/api/v1/openapi.json").json()
    _token, raw = ApiToken.issue(create_user("liferoot", superuser=True))
    return ApiClient(raw, document=document)


@pytest.fixture
def envs():
    return [
        Environment.objects.create(name=n, url=f"http://127.0.0.1:{p}") for n, p in (("env_a", 15001), ("env_b", 15002))
    ]


@pytest.fixture
def app(envs):
    return actions.create_application(name="shop", environments=[envs[0]], options={"modules": []})


def test_a_move_to_an_environment_that_is_not_online_is_refused_and_changes_nothing(api, app):
    status, body = api.call("POST", "/api/v1/apps/shop/move", "/apps/{name}/move", {"to": ["env_b"]})
    assert status == 409 and "env_b is" in body["error"] and "not online" in body["error"], body
    status, body = api.call("POST", "/api/v1/apps/shop/move", "/apps/{name}/move", {"to": ["env_a"]})
    assert status == 409 and "nothing to move" in body["error"]
    status, body = api.call("POST", "/api/v1/apps/shop/move", "/apps/{name}/move", {"to": ["env_a", "env_a"]})
    assert status == 400
    assert api.call("POST", "/api/v1/apps/shop/move", "/apps/{name}/move", {"to": ["env_b"], "x": 1})[0] == 400
    assert api.call("POST", "/api/v1/apps/nope/move", "/apps/{name}/move", {"to": ["env_b"]})[0] == 404
    assert not Job.objects.exists()
    assert list(AppEnvironment.objects.values_list("environment__name", flat=True)) == ["env_a"]


def test_drain_marks_the_environment_and_refuses_new_apps_there_until_undrained(api, app, envs):
    status, body = api.call("POST", "/api/v1/environments/env_a/drain", "/environments/{name}/drain")
    assert status == 202, body
    job = Job.objects.get(pk=body["job_id"])
    assert job.kind == "drain" and job.status == JobStatus.QUEUED and job.environment == envs[0]
    # Asked again while it runs: the same job.
    assert api.call("POST", "/api/v1/environments/env_a/drain", "/environments/{name}/drain")[1] == body
    status, created = api.call("POST", "/api/v1/apps", "/apps", {"name": "other", "environments": ["env_a"]})
    assert status == 400 and "draining" in created["errors"]["environments"][0]
    listed = {
        e["name"]: e["draining"] for e in api.call("GET", "/api/v1/environments", "/environments")[1]["environments"]
    }
    assert listed == {"env_a": True, "env_b": False}
    status, body = api.call("POST", "/api/v1/environments/env_a/undrain", "/environments/{name}/undrain")
    assert (status, body) == (200, {"name": "env_a", "draining": False})
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED  # a queued drain is cancelled at once
    assert api.call("POST", "/api/v1/environments/nope/drain", "/environments/{name}/drain")[0] == 404


def test_the_switch_flips_both_sides_in_one_step_and_a_roll_back_removes_the_targets(app, envs):
    moves.place_move_targets(app, ["env_b"], job_id="j")  # the app does not run: nothing to start
    target = AppEnvironment.objects.get(application=app, environment=envs[1])
    assert target.serving is False
    with pytest.raises(moves.SwitchRefused):
        moves.switch_route(app, ["env_a"], ["env_b", "env_x"], job_id="j")
    moves.switch_route(app, ["env_a"], ["env_b"], job_id="j")
    serving = dict(AppEnvironment.objects.filter(application=app).values_list("environment__name", "serving"))
    assert serving == {"env_a": False, "env_b": True}
    moves.unload_sources(app, ["env_a"], job_id="j")
    assert list(AppEnvironment.objects.filter(application=app).values_list("environment__name", flat=True)) == ["env_b"]
    # A roll back before a switch: the added target goes, the source serves.
    moves.place_move_targets(app, ["env_a"], job_id="k")
    moves.roll_back_move(app, ["env_a"], ["env_b"], job_id="k", reason="test")
    assert dict(AppEnvironment.objects.filter(application=app).values_list("environment__name", "serving")) == {
        "env_b": True
    }


def test_a_running_app_held_out_of_its_route_is_not_chosen(app, envs):
    AppEnvironment.objects.filter(application=app).update(status=AppStatus.RUNNING)
    AppEnvironment.objects.create(application=app, environment=envs[1], status=AppStatus.RUNNING, serving=False)
    route = routing.load_route("shop")
    assert [p.environment for p in route.placements if not p.serving] == ["env_b"]
    assert all(p.environment != "env_b" for p in route.choosable())
    # Nothing else serving it: the proxy waits for the switch rather than answering an error.
    AppEnvironment.objects.filter(application=app, environment=envs[0]).update(serving=False)
    assert routing.decide(routing.load_route("shop"), None, None).kind == "switching"


def test_the_admin_offers_move_and_drain_behind_a_form_and_a_confirmation(client, app, envs):
    client.force_login(create_user("lifeadmin", superuser=True))
    page = client.post(
        "/admin/apps_registry/application/", {"action": "move_applications", "_selected_action": [app.pk]}
    )
    assert page.status_code == 200 and b'name="to"' in page.content and b"env_b" in page.content
    moved = client.post(
        "/admin/apps_registry/application/",
        {"action": "move_applications", "_selected_action": [app.pk], "confirm": "yes", "to": [envs[1].pk]},
        follow=True,
    )
    assert b"not moved" in moved.content and b"not online" in moved.content  # refused: env_b has no lease
    confirm = client.post(
        "/admin/apps_registry/environment/", {"action": "drain_environments", "_selected_action": [envs[0].pk]}
    )
    assert confirm.status_code == 200 and b"Yes, drain" in confirm.content and b"shop" in confirm.content
    done = client.post(
        "/admin/apps_registry/environment/",
        {"action": "drain_environments", "_selected_action": [envs[0].pk], "confirm": "yes"},
        follow=True,
    )
    assert done.status_code == 200 and b"drain job" in done.content
    assert Environment.objects.get(pk=envs[0].pk).draining
    add = client.get("/admin/apps_registry/application/add/")
    assert b"env_a (draining: takes no new apps" in add.content
    change = client.get(f"/admin/apps_registry/application/{app.pk}/change/")
    assert change.status_code == 200 and b"Never moved." in change.content


def _running_move(app, sources, targets):
    from apps_registry.control.lifecycle.move import STEPS
    from apps_registry.registry import jobs

    job = jobs.create_job("move", STEPS, application=app, params={"sources": sources, "targets": targets})
    return jobs.start_job(job.pk, runner="test")


def test_a_move_cancelled_before_its_switch_leaves_the_app_where_it_was(app, envs):
    from apps_registry.control.lifecycle.move import MoveRun
    from apps_registry.registry import jobs

    job = _running_move(app, ["env_a"], ["env_b"])
    moves.place_move_targets(app, ["env_b"], job_id=str(job.pk))  # as its start step had done
    assert jobs.request_cancel(job.pk)
    assert MoveRun(job).run() == "cancelled"
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    assert set(job.steps.values_list("status", flat=True)) == {"cancelled"}
    placed = dict(AppEnvironment.objects.filter(application=app).values_list("environment__name", "serving"))
    assert placed == {"env_a": True}


def test_recovery_resumes_a_move_whose_worker_vanished_and_gives_up_after_five_runs(app, envs, redis_conn):
    import datetime as dt

    from django.utils import timezone

    from apps_registry.control.lifecycle.recovery import MAX_ATTEMPTS, recover_jobs
    from apps_registry.models import AuditEntry

    stale = timezone.now() - dt.timedelta(minutes=5)
    job = _running_move(app, ["env_a"], ["env_b"])
    Job.objects.filter(pk=job.pk).update(heartbeat_at=stale)
    assert recover_jobs()["resumed"] == [str(job.pk)]
    assert AuditEntry.objects.filter(action="move_resumed", request_id=str(job.pk)).exists()
    assert recover_jobs()["resumed"] == []  # its heartbeat is fresh again: not twice
    moves.place_move_targets(app, ["env_b"], job_id=str(job.pk))
    Job.objects.filter(pk=job.pk).update(heartbeat_at=stale, attempts=MAX_ATTEMPTS)
    assert recover_jobs()["given_up"] == [str(job.pk)]
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "rolled back" in job.error
    assert dict(AppEnvironment.objects.filter(application=app).values_list("environment__name", "serving")) == {
        "env_a": True
    }


def test_move_recovery_leaves_backup_jobs_to_their_own_recovery(app, redis_conn):
    import datetime as dt

    from django.utils import timezone

    from apps_registry.control.lifecycle.recovery import recover_jobs

    stale = timezone.now() - dt.timedelta(minutes=5)
    backup = Job.objects.create(kind="backup", application=app, status=JobStatus.RUNNING, heartbeat_at=stale)
    assert recover_jobs() == {"resumed": [], "given_up": []}  # not resumed as a drain
    backup.refresh_from_db()
    assert backup.status == JobStatus.RUNNING and backup.attempts == 0
