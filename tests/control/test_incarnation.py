"""The incarnation id tells a deleted app's queued work from the app created again under its
name (in-process, real Redis and PostgreSQL)."""

import pytest

from apps_registry.control.start_queue.job import StartJob
from apps_registry.models import AppEnvironment, Application, AuditEntry
from apps_registry.registry import actions

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_queued_start_of_a_deleted_app_does_not_start_the_app_created_again(redis_conn):
    """The deleted app's job and the new app's first request carry the same generation (both
    count from 0): the incarnation tells them apart, so the old job ends "gone"."""
    env = actions.register_environment(name="env_inc", url="http://127.0.0.1:9")
    old = actions.create_application(name="reborn", environments=[env])
    old_request = actions.request_start(old)
    old_generation = Application.objects.get(pk=old.pk).generation
    actions.delete_application(Application.objects.get(pk=old.pk))
    new = actions.create_application(name="reborn", environments=[env])
    actions.request_start(new)
    assert Application.objects.get(pk=new.pk).generation == old_generation  # the trap

    class NoLock:
        lost = None

        def acquire(self, wait: float = 0.0) -> bool:
            return True

        def release(self) -> None:
            pass

    started: list[str] = []
    job = StartJob(
        "reborn",
        ["env_inc"],
        generation=old_generation,
        request_id=old_request,
        starter=lambda *args, **kwargs: started.append(args[1]),
        ingest=lambda: 0,
        lock=NoLock(),
        incarnation=str(old.incarnation),
    )
    assert job.run(requeue=False) == "gone"
    assert started == []
    assert AppEnvironment.objects.get(application=new).status == "queued"
    assert AuditEntry.objects.get(request_id=old_request).result == "error"
