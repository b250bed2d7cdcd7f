"""Tracked jobs: the registry's transitions (a done job is never reopened, cancel of a queued job
is immediate, of a running one a flag) and ``GET /api/v1/jobs/<id>`` against its document."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client

from apps_registry.models import ApiToken, AuditEntry, Environment, JobStatus, StepStatus
from apps_registry.registry import actions, jobs
from tests.support.api import ApiClient
from tests.support.users import create_user

pytestmark = pytest.mark.django_db
TEMPLATE = "/jobs/{job_id}"


@pytest.fixture
def api():
    document = Client().get("/api/v1/openapi.json").json()
    _token, raw = ApiToken.issue(create_user("jobroot", superuser=True))
    return ApiClient(raw, document=document)


@pytest.fixture
def app():
    env = Environment.objects.create(name="env_a", url="http://127.0.0.1:15000")
    return actions.create_application(name="shop", environments=[env], options={"modules": []})


def test_steps_advance_in_order_and_the_job_ends_once(app):
    job = jobs.create_job("move", ["check", "start", "switch"], application=app, params={"to": ["env_a"]})
    assert [s.status for s in job.steps.all()] == ["queued"] * 3
    jobs.start_job(job.pk, runner="rq-1")
    jobs.start_step(job.pk, "check")
    jobs.finish_step(job.pk, "check")
    jobs.start_step(job.pk, "start")
    jobs.fail_step(job.pk, "start", "env_a refused")
    done = jobs.finish_job(job.pk, error="env_a refused")
    assert done.status == JobStatus.FAILED
    steps = {s.name: s for s in done.steps.all()}
    assert steps["check"].status == StepStatus.SUCCEEDED and steps["check"].finished_at
    assert steps["start"].error == "env_a refused"
    assert steps["switch"].status == StepStatus.CANCELLED  # never ran
    assert jobs.finish_job(job.pk).status == JobStatus.FAILED  # not reopened as succeeded
    with pytest.raises(jobs.JobDone):
        jobs.start_step(job.pk, "switch")
    actions_logged = list(AuditEntry.objects.filter(request_id=str(job.pk)).values_list("action", flat=True))
    assert sorted(actions_logged) == ["move_failed", "move_requested"]


def test_cancel_of_a_queued_job_is_immediate_of_a_running_one_a_flag(app):
    queued = jobs.create_job("move", ["check"], application=app)
    assert jobs.request_cancel(queued.pk)
    queued.refresh_from_db()
    assert queued.status == JobStatus.CANCELLED
    with pytest.raises(jobs.JobDone):
        jobs.start_job(queued.pk)
    assert not jobs.request_cancel(queued.pk)  # already done
    running = jobs.create_job("move", ["check"], application=app)
    jobs.start_job(running.pk)
    assert jobs.request_cancel(running.pk)
    running.refresh_from_db()
    assert running.status == JobStatus.RUNNING and jobs.cancel_requested(running.pk)
    assert jobs.cancel_job(running.pk).status == JobStatus.CANCELLED


def test_a_step_list_must_name_each_step_once(app):
    with pytest.raises(ValueError):
        jobs.create_job("move", ["a", "a"], application=app)
    with pytest.raises(ValueError):
        jobs.create_job("move", [], application=app)


def test_the_api_answers_the_job_with_its_steps(api, app):
    job = jobs.create_job("move", ["check", "switch"], application=app)
    jobs.start_job(job.pk)
    jobs.start_step(job.pk, "check")
    status, body = api.call("GET", f"/api/v1/jobs/{job.pk}", TEMPLATE)
    assert status == 200
    assert body["id"] == str(job.pk) and body["kind"] == "move" and body["status"] == "running"
    assert [(s["name"], s["status"]) for s in body["steps"]] == [("check", "running"), ("switch", "queued")]
    assert body["steps"][0]["started_at"] and body["steps"][1]["started_at"] is None
    assert api.call("GET", f"/api/v1/jobs/{uuid.uuid4()}", TEMPLATE)[0] == 404
    assert api.call("GET", "/api/v1/jobs/not-a-uuid", TEMPLATE)[0] == 404


def test_the_admin_lists_jobs_and_shows_their_steps(client, app):
    job = jobs.create_job("move", ["check", "switch"], application=app)
    jobs.start_job(job.pk)
    jobs.start_step(job.pk, "check")
    jobs.fail_step(job.pk, "check", "env_b is offline")
    client.force_login(create_user("jobadmin", superuser=True))
    listing = client.get("/admin/apps_registry/job/")
    assert listing.status_code == 200 and b"shop" in listing.content
    page = client.get(f"/admin/apps_registry/job/{job.pk}/change/")
    assert page.status_code == 200
    assert b"env_b is offline" in page.content and b"appsup-steps" in page.content
    # The app's page lists its moves, linked.
    change = client.get(f"/admin/apps_registry/application/{app.pk}/change/")
    assert (
        f"/admin/apps_registry/job/{job.pk}/change/".encode() in change.content and b"running (0/2)" in change.content
    )


def test_the_api_cancels_a_queued_job_and_refuses_a_finished_one(api, app):
    job = jobs.create_job("move", ["check", "switch"], application=app)
    url, template = f"/api/v1/jobs/{job.pk}/cancel", "/jobs/{job_id}/cancel"
    status, body = api.call("POST", url, template)
    assert status == 202 and body["status"] == "cancelled"
    assert {s["status"] for s in body["steps"]} == {"cancelled"}
    assert api.call("POST", url, template)[0] == 409
    assert api.call("POST", f"/api/v1/jobs/{uuid.uuid4()}/cancel", template)[0] == 404
    assert AuditEntry.objects.filter(action="move_cancel_requested", via="api").count() == 1


def test_the_admin_cancels_selected_jobs(client, app):
    queued = jobs.create_job("move", ["check"], application=app)
    done = jobs.create_job("move", ["check"], application=app)
    jobs.finish_job(done.pk)
    client.force_login(create_user("jobcanceller", superuser=True))
    page = client.post(
        "/admin/apps_registry/job/", {"action": "cancel_jobs", "_selected_action": [queued.pk, done.pk]}, follow=True
    )
    assert b"Cancel asked of 1 job; 1 finished already" in page.content
    queued.refresh_from_db()
    assert queued.status == JobStatus.CANCELLED
