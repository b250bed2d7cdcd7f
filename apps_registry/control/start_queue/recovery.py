"""Finding starts whose job died or never reached the queue, and dealing with them."""

from __future__ import annotations

import datetime as dt
import logging

import rq
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from apps_registry.control import failover, keys, redis_client, undelivered
from apps_registry.control.start_queue.enqueue import (
    app_of_job,
    enqueue_start,
    forget_pending,
    get_queue,
    pending_key,
)
from apps_registry.control.start_queue.lock import lock_key
from apps_registry.models import AppEnvironment, Application, AppStatus
from apps_registry.registry import actions

log = logging.getLogger(__name__)


def recover_interrupted_starts(now: dt.datetime | None = None) -> dict[str, dict[str, list[str]]]:
    """Find starts whose job died or was never queued, and deal with them.

    - Apps with a pending start request (``pending_key``) but no live job — the app's lock is
      not held, no job of the app waits in the queue, none started within the lock TTL (it may
      not hold the lock yet): their placements ``queued``/``starting`` for longer than the TTL
      become ``error`` "start interrupted"; a pending entry with nothing left queued or starting
      is dropped. A ``starting`` reported by a worker's own reconciliation or restart has no
      pending entry, so it is never mistaken for a dead job.
    - Placements ``queued`` for longer than the TTL whose app has no pending entry and no live
      job lost their job before it reached the queue (the supervisor died between commit and
      enqueue, or Redis lost its data): their start is enqueued again.

    Returns ``{"interrupted": {app: envs}, "resumed": {app: envs}}``."""
    ttl = settings.APP_CONFIG.start_lock_ttl
    now = now or timezone.now()
    cutoff = now - dt.timedelta(seconds=ttl)
    client = redis_client.commands()
    pending = client.hgetall(pending_key())
    suspects: dict[str, list[str]] = {}
    lost: dict[str, list[str]] = {}
    busy: set[str] = set()
    rows = (
        AppEnvironment.objects.filter(
            Q(application__name__in=list(pending), status__in=(AppStatus.QUEUED, AppStatus.STARTING))
            | Q(status=AppStatus.QUEUED, status_changed_at__lt=cutoff)
        )
        .order_by("environment__name")
        .values_list("application__name", "environment__name", "status_changed_at")
    )
    for app_name, env, changed in rows:
        if app_name in pending:
            busy.add(app_name)
            if changed < cutoff:
                suspects.setdefault(app_name, []).append(env)
        else:
            lost.setdefault(app_name, []).append(env)
    names = sorted(set(pending) | set(lost))
    result: dict[str, dict[str, list[str]]] = {"interrupted": {}, "resumed": {}}
    if not names:
        return result
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.exists(lock_key(name))
        locked = {name for name, held in zip(names, pipe.execute(), strict=True) if held}
    queue = get_queue()
    waiting = {app_of_job(id_) for id_ in queue.get_job_ids()}
    recent = _recently_started(queue, now - dt.timedelta(seconds=ttl))
    for name in names:
        if name in locked or name in waiting or name in recent:
            continue
        if name in lost:
            _resume(name, lost[name])
            result["resumed"][name] = lost[name]
        elif name not in busy:
            forget_pending(name, pending[name])  # its job finished its work, then died
        elif name in suspects and actions.interrupt_starts(
            name, suspects[name], before=cutoff, request_id=pending[name].partition(" ")[2]
        ):
            log.warning("start of %s on %s was interrupted", name, ", ".join(suspects[name]))
            result["interrupted"][name] = suspects[name]
            forget_pending(name, pending[name])
    return result


def _resume(app_name: str, environments: list[str]) -> None:
    """Enqueue again a start whose job never reached the queue, under the app's current
    generation (placements are still ``queued`` only if no later request changed them)."""
    found = Application.objects.filter(name=app_name).values_list("generation", "incarnation").first()
    if found is None:
        return
    generation, incarnation = found
    request_id = actions.resume_start_request(app_name, environments)
    log.warning("start of %s on %s never reached the queue: enqueued again", app_name, ", ".join(environments))
    enqueue_start(app_name, environments, generation=generation, request_id=request_id, incarnation=str(incarnation))


def _recently_started(queue: rq.Queue, since: dt.datetime) -> set[str]:
    from rq.registry import StartedJobRegistry

    registry = StartedJobRegistry(queue=queue)
    ids = [id_ for id_ in registry.get_job_ids(cleanup=False) if app_of_job(id_)]
    recent = set()
    for job in rq.job.Job.fetch_many(ids, connection=queue.connection):
        if job is None:
            continue
        started = job.started_at or job.enqueued_at
        if started is not None:
            started = started if started.tzinfo else started.replace(tzinfo=dt.UTC)
        if started is None or started >= since:
            recent.add(app_of_job(job.id))
    return recent


def recover_throttled() -> None:
    """Run the periodic checks — interrupted starts, requests to environments that are not
    there (control.undelivered), tracked jobs whose worker died (control.lifecycle), apps to fail
    over (control.failover) — at most once per lock TTL across all processes."""
    ttl = settings.APP_CONFIG.start_lock_ttl
    if not redis_client.commands().set(keys.start_recovery_lock(), "1", nx=True, px=int(ttl * 1000)):
        return
    try:
        recover_interrupted_starts()
    except Exception:
        log.exception("start recovery check failed")
    try:
        undelivered.close_undeliverable()
    except Exception:
        log.exception("undelivered request check failed")
    try:
        from apps_registry.control.lifecycle.recovery import recover_jobs  # (it imports this package)

        recover_jobs()
    except Exception:
        log.exception("tracked job recovery check failed")
    try:
        failover.fail_over()
    except Exception:
        log.exception("failover check failed")
