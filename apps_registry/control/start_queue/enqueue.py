"""Putting starts on the queue, and what is waiting there."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import rq
from django.conf import settings

from apps_registry.control import keys, redis_client

log = logging.getLogger(__name__)

QUEUE_NAME = "app_starts"
JOB_PREFIX = "start-"
# The job, by dotted path: the queue worker imports it (``worker``), this module need not.
JOB_FUNCTION = "apps_registry.control.start_queue.worker.run_start"


def pending_key() -> str:
    """Hash app → ``"<generation> <request_id>"`` of every start request not finished by its
    job yet. A worker's own ``starting`` (reconciliation, restart) is not in it, so recovery
    leaves that alone."""
    return keys.start_pending()


_FORGET = """
if redis.call('hget', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('hdel', KEYS[1], ARGV[1])
end
return 0
"""


def pending_value(generation: int, request_id: str) -> str:
    return f"{generation} {request_id}"


def forget_pending(app_name: str, value: str) -> None:
    """Drop the app's pending-start entry if it is still this request's."""
    try:
        redis_client.commands().eval(_FORGET, 1, pending_key(), app_name, value)
    except Exception:  # recovery drops it later
        log.warning("could not clear the pending start of %s", app_name, exc_info=True)


def job_id(app_name: str, generation: int, attempt: int = 0, incarnation: str = "") -> str:
    # The incarnation's first characters keep a re-created app's jobs apart from the deleted one's.
    suffix = f"-{incarnation[:8]}" if incarnation else ""
    return f"{JOB_PREFIX}{app_name}-{generation}-{attempt}{suffix}"


def app_of_job(job_id_: str) -> str | None:
    if not job_id_.startswith(JOB_PREFIX):
        return None
    return job_id_[len(JOB_PREFIX) :].split("-", 1)[0]


def get_queue() -> rq.Queue:
    import django_rq

    return django_rq.get_queue(QUEUE_NAME)


def enqueue_start(
    app_name: str,
    environments: Sequence[str],
    *,
    generation: int,
    request_id: str,
    attempt: int = 0,
    incarnation: str = "",
) -> None:
    """Put a start on the queue. Called after the request's transaction committed."""
    timeout = settings.APP_CONFIG.start_timeout
    redis_client.commands().hset(pending_key(), app_name, pending_value(generation, request_id))
    get_queue().enqueue(
        JOB_FUNCTION,
        app_name,
        list(environments),
        generation=generation,
        request_id=request_id,
        attempt=attempt,
        incarnation=incarnation,
        job_id=job_id(app_name, generation, attempt, incarnation),
        job_timeout=int(timeout * max(1, len(environments)) + 60),
        result_ttl=600,
        failure_ttl=7 * 24 * 3600,
        description=f"start {app_name} on {', '.join(environments)}",
    )


def queue_positions() -> dict[str, int]:
    """Each app waiting in the queue → its 1-based position (first job of the app counts)."""
    positions: dict[str, int] = {}
    for index, id_ in enumerate(get_queue().get_job_ids(), start=1):
        name = app_of_job(id_)
        if name and name not in positions:
            positions[name] = index
    return positions
