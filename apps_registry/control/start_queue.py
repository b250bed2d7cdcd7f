"""The start queue: starts an app on its environments one after another.

A start can write an app's initial data, so two environments must never initialise one app
at once. Every start request becomes an RQ job on ``app_starts`` (enqueued after commit);
the job takes a per-app lock in Redis (owner token, expiry renewed while it runs), then
walks the app's environments in the app's own order (``start_order``: name order rotated by a
stable hash of the app's name, so first initialisations spread over the environments instead
of all landing on the first one): it stops if a later request superseded it,
marks the environment ``starting``, asks the process adapter to start it there and waits
for ``running``, ``error`` or the start timeout before going on.

Different apps start in parallel on several queue workers; one app's starts stay serial
because of the lock, not because of the queue. A job that cannot take the lock (an older
job of the same app is finishing its current environment) puts itself back at the end of
the queue instead of pinning a queue worker.

If a queue worker dies mid-start its lock expires; ``recover_interrupted_starts`` (run when
a queue worker starts and while it idles, and by the status endpoint) marks what the dead
job left ``queued``/``starting`` as ``error`` ("start interrupted") so it can be retried.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Sequence

import rq
from django.conf import settings
from django.db import close_old_connections
from django.db.models import Q
from django.utils import timezone

from apps_registry.control import redis_client
from apps_registry.models import AppEnvironment, Application, AppStatus
from apps_registry.registry import actions

log = logging.getLogger(__name__)

QUEUE_NAME = "app_starts"
JOB_PREFIX = "start-"
# How long a job waits for another job's lock on the same app before requeueing itself.
LOCK_WAIT = 1.0
SETTLED = (AppStatus.RUNNING, AppStatus.ERROR, AppStatus.STOPPED)
SUPERSEDED = "superseded by a later request"

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def lock_key(app_name: str) -> str:
    return redis_client.key("lock", "start", app_name)


def pending_key() -> str:
    """Hash app → ``"<generation> <request_id>"`` of every start request not finished by its
    job yet. A worker's own ``starting`` (reconciliation, restart) is not in it, so recovery
    leaves that alone."""
    return redis_client.key("start", "pending")


_FORGET = """
if redis.call('hget', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('hdel', KEYS[1], ARGV[1])
end
return 0
"""


def _pending_value(generation: int, request_id: str) -> str:
    return f"{generation} {request_id}"


def _forget_pending(app_name: str, value: str) -> None:
    """Drop the app's pending-start entry if it is still this request's."""
    try:
        redis_client.commands().eval(_FORGET, 1, pending_key(), app_name, value)
    except Exception:  # recovery drops it later
        log.warning("could not clear the pending start of %s", app_name, exc_info=True)


class StartLock:
    """A per-app lock: ``SET NX PX`` with an owner token, renewed by a thread while held,
    released only by its owner (compare-and-delete). If renewal fails the lock is lost and
    ``lost`` is set, so the holder stops before touching the next environment."""

    def __init__(self, app_name: str, ttl: float | None = None):
        self.key = lock_key(app_name)
        self.ttl_ms = int((ttl or settings.APP_CONFIG.start_lock_ttl) * 1000)
        self.token = secrets.token_hex(16)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._redis = redis_client.commands()

    def acquire(self, wait: float = 0.0) -> bool:
        deadline = time.monotonic() + wait
        while True:
            if self._redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
                self._thread = threading.Thread(target=self._renew_loop, name=f"renew {self.key}", daemon=True)
                self._thread.start()
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _renew_loop(self) -> None:
        interval = self.ttl_ms / 3000
        while not self._stop.wait(interval):
            try:
                if not self._redis.eval(_RENEW, 1, self.key, self.token, self.ttl_ms):
                    self.lost.set()
                    return
            except Exception:  # Redis hiccup: try again, the expiry leaves room for two misses
                log.warning("could not renew %s", self.key, exc_info=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._redis.eval(_RELEASE, 1, self.key, self.token)
        except Exception:  # it expires on its own
            log.warning("could not release %s", self.key, exc_info=True)


# --- Enqueueing ------------------------------------------------------------------------------


def job_id(app_name: str, generation: int, attempt: int = 0) -> str:
    return f"{JOB_PREFIX}{app_name}-{generation}-{attempt}"


def app_of_job(job_id_: str) -> str | None:
    if not job_id_.startswith(JOB_PREFIX):
        return None
    return job_id_[len(JOB_PREFIX) :].split("-", 1)[0]


def get_queue() -> rq.Queue:
    import django_rq

    return django_rq.get_queue(QUEUE_NAME)


def enqueue_start(
    app_name: str, environments: Sequence[str], *, generation: int, request_id: str, attempt: int = 0
) -> None:
    """Put a start on the queue. Called after the request's transaction committed."""
    timeout = settings.APP_CONFIG.start_timeout
    redis_client.commands().hset(pending_key(), app_name, _pending_value(generation, request_id))
    get_queue().enqueue(
        run_start,
        app_name,
        list(environments),
        generation=generation,
        request_id=request_id,
        attempt=attempt,
        job_id=job_id(app_name, generation, attempt),
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


# --- The job ---------------------------------------------------------------------------------


def start_order(app_name: str, environments: Sequence[str]) -> list[str]:
    """The order in which one app's environments are started (one after another).

    A first start initialises the app's shared database, CPU work done by one agent process;
    if every app began with the alphabetically first environment, that agent would do all of
    it while the others wait. Rotating name order by a stable hash of the app's name (crc32:
    the same in every process, unlike ``hash()``) spreads first initialisations over the
    environments, and a retried or requeued job of the app keeps the same order."""
    names = sorted(environments)
    if len(names) < 2:
        return names
    shift = zlib.crc32(app_name.encode()) % len(names)
    return names[shift:] + names[:shift]


def run_start(app_name: str, environments: list[str], *, generation: int, request_id: str, attempt: int = 0) -> str:
    """The RQ job. Runs in the queue worker process itself (``StartQueueWorker``), which keeps
    its database connection between jobs; one broken or too old is replaced first. If the job
    fails unexpectedly its pending entry stays, so the recovery check marks what it left
    ``queued``/``starting`` as interrupted."""
    close_old_connections()
    try:
        outcome = StartJob(app_name, environments, generation=generation, request_id=request_id).run(attempt)
        if outcome != "requeued":
            _forget_pending(app_name, _pending_value(generation, request_id))
        return outcome
    finally:
        close_old_connections()


class StartJob:
    """One start request for one app, executed under the app's lock. Also used in-process by
    the standalone adapter, with ``starter`` calling the runtime directly."""

    def __init__(
        self,
        app_name: str,
        environments: Sequence[str],
        *,
        generation: int,
        request_id: str,
        starter: Callable[..., str | None] | None = None,
        ingest: Callable[[], object] | None = None,
        lock: StartLock | None = None,
    ):
        self.app_name = app_name
        self.environments = start_order(app_name, environments)
        self.generation = generation
        self.request_id = request_id
        self.starter = starter
        self.ingest = ingest
        self.lock = lock

    def _current_generation(self) -> int | None:
        return Application.objects.filter(name=self.app_name).values_list("generation", flat=True).first()

    def _outdated(self) -> str | None:
        current = self._current_generation()
        if current is None:
            actions.finish_request(self.request_id, error="application deleted before it started")
            return "gone"
        if current != self.generation:
            actions.finish_request(self.request_id, error=SUPERSEDED)
            return "superseded"
        return None

    def run(self, attempt: int = 0, lock_wait: float = LOCK_WAIT, requeue: bool = True) -> str:
        """Start the app on each environment in turn. If another job holds the app's lock:
        requeue (queue workers) or keep waiting while still the latest request (in-process)."""
        outdated = self._outdated()
        if outdated:
            return outdated
        lock = self.lock or StartLock(self.app_name)
        while not lock.acquire(wait=lock_wait):
            if requeue:
                # An older job of this app is finishing its current environment: wait our turn
                # at the back of the queue rather than holding a queue worker.
                enqueue_start(
                    self.app_name,
                    self.environments,
                    generation=self.generation,
                    request_id=self.request_id,
                    attempt=attempt + 1,
                )
                return "requeued"
            outdated = self._outdated()
            if outdated:
                return outdated
        try:
            return self._run_locked(lock)
        finally:
            lock.release()

    def _run_locked(self, lock: StartLock) -> str:
        errors: list[str] = []
        for env in self.environments:
            if lock.lost.is_set():
                errors.append("start lock lost (queue worker stalled); retry the start")
                break
            outcome = actions.begin_environment_start(self.app_name, env, generation=self.generation)
            if outcome == "superseded":
                actions.finish_request(self.request_id, error=SUPERSEDED)
                return "superseded"
            if outcome != "starting":
                continue
            error = self._start_one(env)
            if error:
                errors.append(f"{env}: {error}")
        actions.close_start_request(self.request_id, error="; ".join(errors))
        return "error" if errors else "ok"

    def _start_one(self, env: str) -> str | None:
        timeout = settings.APP_CONFIG.start_timeout
        deadline = time.monotonic() + timeout
        try:
            error = self._starter()(
                self.app_name, env, generation=self.generation, request_id=self.request_id, timeout=timeout
            )
        except Exception as exc:  # the adapter failed to reach the environment
            log.exception("start of %s on %s failed", self.app_name, env)
            error = f"could not send the start: {exc}"
        if error:
            actions.record_app_status(self.app_name, env, AppStatus.ERROR, error=error)
            return error
        # Even if a later request supersedes us meanwhile, wait for this environment to settle:
        # the next start of this app must not begin while this initialisation may still run.
        while True:
            status, error = self._status(env)
            if status is None:
                return None  # placement deleted
            if status in SETTLED:
                return error if status == AppStatus.ERROR else None
            if time.monotonic() >= deadline:
                message = f"start timed out after {timeout:g} s"
                actions.record_app_status(self.app_name, env, AppStatus.ERROR, error=message)
                return message
            time.sleep(0.05)

    def _starter(self) -> Callable[..., str | None]:
        if self.starter is None:
            from apps_registry.control.runners import remote

            adapter = remote.get_process_adapter()
            self.starter = getattr(adapter, "start_on_environment", None) or remote.start_on_environment
        return self.starter

    def _status(self, env: str) -> tuple[str | None, str]:
        if self.ingest is None:
            self.ingest = _default_ingest()
        try:
            self.ingest()
        except Exception:  # status stays as it is in the DB; the next poll tries again
            log.warning("event ingest failed", exc_info=True)
        row = (
            AppEnvironment.objects.filter(application__name=self.app_name, environment__name=env)
            .values_list("status", "error")
            .first()
        )
        return row if row else (None, "")


def _default_ingest() -> Callable[[], object]:
    try:
        from apps_registry.control.ingest import ingest
    except ImportError:  # standalone builds have no event stream
        return lambda: None
    if not redis_client.configured():
        return lambda: None
    return ingest


# --- Recovery --------------------------------------------------------------------------------


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
            _forget_pending(name, pending[name])  # its job finished its work, then died
        elif name in suspects and actions.interrupt_starts(
            name, suspects[name], before=cutoff, request_id=pending[name].partition(" ")[2]
        ):
            log.warning("start of %s on %s was interrupted", name, ", ".join(suspects[name]))
            result["interrupted"][name] = suspects[name]
            _forget_pending(name, pending[name])
    return result


def _resume(app_name: str, environments: list[str]) -> None:
    """Enqueue again a start whose job never reached the queue, under the app's current
    generation (placements are still ``queued`` only if no later request changed them)."""
    generation = Application.objects.filter(name=app_name).values_list("generation", flat=True).first()
    if generation is None:
        return
    request_id = actions.resume_start_request(app_name, environments)
    log.warning("start of %s on %s never reached the queue: enqueued again", app_name, ", ".join(environments))
    enqueue_start(app_name, environments, generation=generation, request_id=request_id)


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
    """Run the recovery check at most once per lock TTL across all processes."""
    ttl = settings.APP_CONFIG.start_lock_ttl
    if not redis_client.commands().set(redis_client.key("lock", "start-recovery"), "1", nx=True, px=int(ttl * 1000)):
        return
    try:
        recover_interrupted_starts()
    except Exception:
        log.exception("start recovery check failed")


class StartQueueWorker(rq.SimpleWorker):
    """The RQ worker for ``app_starts``: runs each job itself, and the recovery check when it
    starts and every few seconds while idle, so a start interrupted by a dead worker becomes
    visible.

    No work-horse is forked per job: a start job mostly waits for a worker's acknowledgement,
    and the fork plus fresh database and Redis connections in every horse were half of the
    queue worker's CPU (docs/benchmarks.md, "Start queue"). A job that dies takes its queue
    worker with it, which the recovery check handles as it handles a killed worker."""

    def bootstrap(self, *args, **kwargs) -> None:
        super().bootstrap(*args, **kwargs)
        self._next_recovery = 0.0

    @property
    def dequeue_timeout(self) -> int:
        # Wake up regularly while idle so the recovery check runs.
        return max(1, int(settings.APP_CONFIG.start_lock_ttl))

    def heartbeat(self, timeout: int | None = None, pipeline=None):
        result = super().heartbeat(timeout, pipeline)
        # Without a pipeline, the heartbeat comes from the idle loop or right after a job.
        if pipeline is None and time.monotonic() >= self._next_recovery:
            self._next_recovery = time.monotonic() + settings.APP_CONFIG.start_lock_ttl / 2
            try:
                recover_throttled()
            finally:
                close_old_connections()
        return result
