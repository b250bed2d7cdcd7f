"""Concurrent requests for one application through the API, on the real PostgreSQL: each
thread has its own database connection, so the row locks and the unique index decide, as they
do between gunicorn workers. Never a 500."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.db import connection

from apps_registry.models import Application, AuditEntry, Environment
from apps_registry.registry import actions
from tests.support.api import ApiClient

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 8
ROUNDS = 3


def _concurrently(count: int, call) -> Counter:
    """Run ``call()`` in ``count`` threads released together; the statuses they got."""
    barrier = threading.Barrier(count)
    statuses: list[int] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            statuses.append(call())
        except BaseException as error:  # noqa: BLE001 - reported by the test
            failures.append(error)
        finally:
            connection.close()  # this thread's own connection

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures, failures
    return Counter(statuses)


@pytest.fixture
def env(redis_conn):
    return Environment.objects.create(name="env_a", url="http://127.0.0.1:15000")


def test_concurrent_deletes_of_one_app_one_204_the_others_404(operator, env):
    api = ApiClient.for_user(operator)
    for round_ in range(ROUNDS):
        name = f"race_del_{round_}"
        actions.create_application(name=name, environments=[env], options={"modules": []})
        got = _concurrently(THREADS, lambda name=name: api.call("DELETE", f"/api/v1/apps/{name}")[0])
        assert got == Counter({204: 1, 404: THREADS - 1}), got
        assert not Application.objects.filter(name=name).exists()
        assert AuditEntry.objects.filter(app_name=name, action="delete").count() == 1


def test_concurrent_creates_of_one_name_one_201_the_others_409(operator, env):
    api = ApiClient.for_user(operator)
    for round_ in range(ROUNDS):
        name = f"race_new_{round_}"
        body = {"name": name, "environments": ["env_a"], "admin_password": "pw-race-1"}
        got = _concurrently(THREADS, lambda body=body: api.post("/api/v1/apps", body)[0])
        assert got == Counter({201: 1, 409: THREADS - 1}), got
        assert AuditEntry.objects.filter(app_name=name, action="create").count() == 1
