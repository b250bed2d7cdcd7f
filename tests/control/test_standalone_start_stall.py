"""Standalone's start job against a stop and a start that arrive right after the starter
recorded ``running`` (in this process, real PostgreSQL, the real local runner and file lock).

The interleaving is forced, not waited for: the starter is the runner's own, and the stop and
the start are requested at the point where it has returned and the job still holds the app's
lock. A job that then polls the placement sees ``queued`` (the later start), while the stop
that would settle it waits for the lock the job holds: it stalled until the start timeout and
closed its request "start timed out".
"""

from __future__ import annotations

import dataclasses
import time

import pytest
from django.db import connections

from apps_registry.control.runners.local import LocalProcessAdapter
from apps_registry.models import AppEnvironment, Application, AppStatus, AuditEntry, Environment
from apps_registry.registry import actions
from tests.support.processes import wait_until
from worker_agent.hosting import app_databases, runtime
from worker_agent.hosting.db_router import alias_for

START_TIMEOUT = 5.0
APP = "stall_a"


@pytest.fixture(scope="module", autouse=True)
def _app_alias(django_db_setup, django_db_blocker):
    """The app's database alias, registered after the session's test databases are set up (it is
    not one of them) but before pytest-django sets the test's databases up (it
    refuses connections to aliases it did not know then); the app is dropped after the module."""
    app_databases.register(app_databases.describe(APP, {}), frozenset())
    yield
    with django_db_blocker.unblock():
        runtime.remove_app(APP, drop_data=True)
    alias = alias_for(APP)
    app_databases.unregister(alias)
    del connections[alias]
    connections.settings.pop(alias)  # else pytest-django takes it for a test database to drop


@pytest.fixture
def standalone_runner(settings, redis_conn) -> LocalProcessAdapter:
    settings.APP_PROCESS_BACKEND = "apps_registry.control.runners.local.LocalProcessAdapter"
    settings.APP_CONFIG = dataclasses.replace(settings.APP_CONFIG, start_timeout=START_TIMEOUT)
    return LocalProcessAdapter()


def _placement() -> AppEnvironment:
    return AppEnvironment.objects.get(application__name=APP)


# Threads (the runner's pool) need committed rows; the start opens the app's own database.
@pytest.mark.django_db(transaction=True, databases=["default", alias_for(APP)])
def test_a_stop_and_start_after_the_recorded_start_do_not_stall_the_job(standalone_runner):
    env = Environment.objects.create(name="env_stall", url="http://127.0.0.1:9")
    app = actions.create_application(name=APP, environments=[env], options={"modules": []})
    request_id = actions.new_request_id()
    actions.audit("start", app_name=APP, environments=[env.name], result="pending", request_id=request_id)
    job = standalone_runner.start_job(APP, [env.name], generation=app.generation, request_id=request_id)
    own_starter = job.starter
    later: list[str] = []

    def starter(*args, **kwargs) -> str | None:
        error = own_starter(*args, **kwargs)
        assert _placement().status == AppStatus.RUNNING  # the starter recorded its verdict
        # The trigger point: a stop and a start while the job still holds the app's lock. The
        # local runner queues both behind that lock; the start marks the placement queued.
        fresh = Application.objects.get(name=APP)
        later.append(actions.request_stop(fresh, via="api"))
        later.append(actions.request_start(fresh, via="api"))
        assert _placement().status == AppStatus.QUEUED
        return error

    job.starter = starter
    began = time.monotonic()
    assert job.run(lock_wait=1.0, requeue=False) == "ok"
    assert time.monotonic() - began < START_TIMEOUT / 2
    assert AuditEntry.objects.get(request_id=request_id).result == AuditEntry.Result.OK
    # The stop and the start queued behind the lock then run: the last request wins (the stop
    # finds itself superseded), and the app runs.
    wait_until(
        lambda: not AuditEntry.objects.filter(request_id__in=later, result=AuditEntry.Result.PENDING).exists(),
        timeout=60,
        interval=0.05,
        message="the later stop and start to finish",
    )
    stop, start = (AuditEntry.objects.get(request_id=r) for r in later)
    assert (stop.result, stop.error, start.result) == ("superseded", "superseded by a later request", "ok")
    assert _placement().status == AppStatus.RUNNING
