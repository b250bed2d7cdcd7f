"""The recovery check in process, against the real Redis: which stuck starts it marks, which it
enqueues again, and which it must leave alone. (tests/control/test_queue.py kills a real queue worker.)"""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from apps_registry.control import redis_client
from apps_registry.control.start_queue import enqueue, recovery
from apps_registry.control.start_queue.lock import StartLock, lock_key
from apps_registry.models import AppEnvironment, Application, AuditEntry, Environment
from apps_registry.registry import actions

pytestmark = pytest.mark.django_db


@pytest.fixture
def app(redis_conn):
    envs = [Environment.objects.create(name=n, url="http://127.0.0.1:1") for n in ("env_a", "env_b")]
    app = actions.create_application(name="stuck", environments=envs, options={})
    yield app
    enqueue.get_queue().empty()


def _age(app: Application, seconds: float = 60) -> None:
    """Test set-up: make the placements' current status look old."""
    AppEnvironment.objects.filter(application=app).update(
        status_changed_at=timezone.now() - dt.timedelta(seconds=seconds)
    )


def _statuses(app: Application) -> dict[str, tuple[str, str]]:
    return {
        env: (status, error)
        for env, status, error in AppEnvironment.objects.filter(application=app).values_list(
            "environment__name", "status", "error"
        )
    }


def test_a_start_that_never_reached_the_queue_is_enqueued_again(app, django_capture_on_commit_callbacks):
    request_id = actions.request_start(app)  # its on-commit enqueue never runs: a lost job
    _age(app)
    with django_capture_on_commit_callbacks(execute=True):
        result = recovery.recover_interrupted_starts()
    assert result["resumed"] == {"stuck": ["env_a", "env_b"]}
    stuck = Application.objects.get(pk=app.pk)
    assert enqueue.job_id("stuck", stuck.generation, 0, str(stuck.incarnation)) in enqueue.get_queue().get_job_ids()
    assert AuditEntry.objects.filter(app_name="stuck", action="start_resumed").exists()
    assert AuditEntry.objects.get(request_id=request_id).result == "pending"  # the job will close it
    # Now a job waits for it: a second check leaves it alone.
    assert recovery.recover_interrupted_starts() == {"interrupted": {}, "resumed": {}}


def test_a_dead_job_leaves_an_interrupted_start(app):
    request_id = actions.request_start(app)
    generation = Application.objects.get(pk=app.pk).generation
    assert actions.begin_environment_start("stuck", "env_a", generation=generation) == "starting"
    redis_client.commands().hset(enqueue.pending_key(), "stuck", f"{generation} {request_id}")
    actions.close_request(request_id)  # env_a's acknowledgement closed it ok, then the job died
    _age(app)
    result = recovery.recover_interrupted_starts()
    assert result["interrupted"] == {"stuck": ["env_a", "env_b"]}
    assert _statuses(app) == {"env_a": ("error", "start interrupted"), "env_b": ("error", "start interrupted")}
    entry = AuditEntry.objects.get(request_id=request_id)
    assert (entry.result, entry.error) == ("error", "start interrupted")
    assert not redis_client.commands().hexists(enqueue.pending_key(), "stuck")
    # Retryable: a new start queues it again.
    actions.request_start(app)
    assert {s for s, _e in _statuses(app).values()} == {"queued"}


def test_a_live_job_or_a_workers_own_start_is_left_alone(app):
    request_id = actions.request_start(app)
    generation = Application.objects.get(pk=app.pk).generation
    actions.begin_environment_start("stuck", "env_a", generation=generation)
    redis_client.commands().hset(enqueue.pending_key(), "stuck", f"{generation} {request_id}")
    _age(app)
    lock = StartLock("stuck")
    assert lock.acquire()
    try:
        assert recovery.recover_interrupted_starts()["interrupted"] == {}
    finally:
        lock.release()
    assert _statuses(app)["env_a"][0] == "starting"
    # A worker reporting "starting" by itself (reconciliation) has no pending start request.
    redis_client.commands().hdel(enqueue.pending_key(), "stuck")
    actions.record_app_status("stuck", "env_b", "starting")
    _age(app)
    assert recovery.recover_interrupted_starts()["interrupted"] == {}
    assert {s for s, _e in _statuses(app).values()} == {"starting"}


def test_the_lock_belongs_to_its_owner(redis_conn):
    first, second = StartLock("owned", ttl=5), StartLock("owned", ttl=5)
    assert first.acquire()
    assert not second.acquire(wait=0.1)
    second.release()  # not the owner: must not free it
    assert redis_conn.get(lock_key("owned")) == first.token
    first.release()
    assert redis_conn.get(lock_key("owned")) is None
    assert second.acquire()
    second.release()
