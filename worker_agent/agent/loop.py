"""The worker's agent (``manage.py run_worker``): registration, lease, commands, reconciliation.

Threads:
- the main thread reads this environment's command stream (blocking XREADGROUP, 1 s) and
  hands each command to the app's lane;
- ``AppLanes``: a bounded pool; commands for different apps run concurrently, commands for
  one app run one at a time in the order they were issued;
- the lease thread renews the lease every APP_LEASE_INTERVAL, sends the full heartbeat every
  APP_HEARTBEAT_INTERVAL, re-registers after Redis comes back and deregisters on SIGTERM.

Nothing read from Redis can kill the agent: a bad message is acknowledged as an error.
When Redis goes away the hosted apps keep serving (web processes read only the local state
file); the agent logs one line when the link is lost and one when it is back.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time

import redis
from django.conf import settings
from django.db import close_old_connections

from apps_registry.control import channel as channel
from apps_registry.control import redis_client
from apps_registry.names import is_valid_name
from worker_agent.agent.commands import Command, CommandError, parse_command
from worker_agent.agent.lanes import AppLanes

log = logging.getLogger("worker_agent.agent")

READ_BLOCK_MS = 1000
READ_COUNT = 100
# Pending entries idle this long under another consumer name are taken over.
CLAIM_IDLE_MS = 60_000
BACKOFF_FIRST = 0.25
BACKOFF_CAP = 5.0
# On SIGTERM, commands already running get this long to finish before the agent exits (under
# the usual 10 s stop grace of Docker); an unfinished command stays pending and runs again.
SHUTDOWN_GRACE = 8.0
# Processed command ids remembered in memory (Redis remembers them longer).
DONE_MEMORY = 10_000


# The lease is stamped with the Redis server's clock, not this host's: every environment's
# age is then measured on one clock, and a worker whose clock drifts is not shown offline.
_RENEW_LEASE = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], t[1] + t[2] / 1000000, ARGV[1])
return t[1]
"""


def _version() -> str:
    try:
        import tomllib

        with open(settings.BASE_DIR / "pyproject.toml", "rb") as handle:
            return str(tomllib.load(handle)["project"]["version"])
    except (OSError, KeyError, ValueError):
        return "unknown"


class RedisLink:
    """Tracks whether Redis answers, so that a lost link is logged once, not once per try."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.up = True
        self.generation = 0  # bumped at every restore: threads re-register/re-subscribe

    def lost(self, error: Exception) -> None:
        with self._lock:
            if self.up:
                self.up = False
                log.warning("Redis connection lost (%s); retrying with backoff, apps keep serving", error)

    def ok(self) -> None:
        with self._lock:
            if not self.up:
                self.up = True
                self.generation += 1
                log.warning("Redis connection restored; registering again")


@dataclasses.dataclass
class _Resume:
    app: str
    spec: dict | None


@dataclasses.dataclass
class Converge:
    """A reconciliation step for one app, run in the app's lane like a command."""

    app: str
    want_running: bool


class Agent:
    def __init__(self) -> None:
        config = settings.APP_CONFIG
        self.config = config
        self.env = config.environment_name
        self.redis = redis_client.commands()
        self.stream = channel.command_stream(self.env)
        self.consumer = self.env
        self.stopping = threading.Event()
        self.link = RedisLink()
        self.version = _version()
        self.host = socket.gethostname()
        # Newest generation seen per app (issue order): anything older is superseded.
        self.generations: dict[str, int] = {}
        self._gen_lock = threading.Lock()
        self._done: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._inflight: set[str] = set()
        self._duplicates: dict[str, list[str]] = {}
        self._track_lock = threading.Lock()
        self._group_link_generation = -1
        self._cursor = "0"
        self._next_reconcile = 0.0
        self._cache_ready = True
        # Apps whose start failed here, with the generation it failed at: reconciliation does
        # not retry those in a loop; a new request (a newer generation) tries again.
        self._failed: dict[str, int] = {}
        self.lanes = AppLanes(config.command_concurrency, self._run_task)
        self._renew_lease = self.redis.register_script(_RENEW_LEASE)

    # --- runtime and discovery (other modules, looked up lazily) ------------------------

    @staticmethod
    def _runtime():
        from worker_agent.hosting import runtime

        return runtime

    @staticmethod
    def _discovery():
        from apps_registry.control.discovery import get_discovery

        return get_discovery()

    def _running_apps(self) -> dict[str, dict]:
        try:
            return self._runtime().running_apps()
        except Exception:
            log.exception("cannot read the local state of running apps")
            return {}

    # --- writing to Redis -----------------------------------------------------------------

    def _registration(self) -> dict:
        return {
            "env": self.env,
            "url": self.config.environment_url,
            "proxy_url": self.config.environment_proxy_url,
            "version": self.version,
            "host": self.host,
            "pid": os.getpid(),
            "apps_running": sorted(self._running_apps()),
            "at": time.time(),
        }

    def _announce(self, event_type: str) -> None:
        payload = self._registration()
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(
            channel.env_info_key(self.env),
            mapping={
                **{key: str(value) for key, value in payload.items() if key != "apps_running"},
                "apps_running": json.dumps(payload["apps_running"]),
                "registered_at" if event_type == "register" else "heartbeat_at": str(payload["at"]),
                "stopped_at": "",
            },
        )
        self._renew_lease(keys=[channel.seen_key()], args=[self.env], client=pipe)
        pipe.xadd(
            channel.events_stream(),
            channel.encode_event(event_type, payload),
            maxlen=channel.EVENTS_MAXLEN,
            approximate=True,
        )
        pipe.execute()

    def _deregister(self) -> None:
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(channel.seen_key(), self.env)
        pipe.hset(channel.env_info_key(self.env), "stopped_at", str(now))
        pipe.xadd(
            channel.events_stream(),
            channel.encode_event("deregister", {"env": self.env, "at": now}),
            maxlen=channel.EVENTS_MAXLEN,
            approximate=True,
        )
        pipe.execute()

    def emit_status(self, app: str, status: str, error: str = "") -> None:
        """Report an app's status here; a Redis failure is logged, never raised."""
        payload = {"app": app, "env": self.env, "status": status, "error": error, "at": time.time()}
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(
                channel.status_key(app),
                self.env,
                json.dumps({"status": status, "error": error, "at": payload["at"]}),
            )
            pipe.xadd(
                channel.events_stream(),
                channel.encode_event("status", payload),
                maxlen=channel.EVENTS_MAXLEN,
                approximate=True,
            )
            pipe.execute()
        except redis.RedisError as error_:
            self.link.lost(error_)

    def _acknowledge(self, command_id: str, entry_id: str, result: str, error: str = "", **extra) -> None:
        """Write the acknowledgement, remember the id as done, then XACK — retried until
        Redis takes it (or the agent stops: the entry then stays pending and comes back)."""
        payload = {
            "id": command_id,
            "env": self.env,
            "result": result,
            "error": error,
            "at": time.time(),
            **extra,
        }
        raw = json.dumps(payload)
        delay = BACKOFF_FIRST
        while True:
            try:
                pipe = self.redis.pipeline(transaction=True)
                pipe.xadd(
                    channel.events_stream(),
                    channel.encode_event("ack", payload),
                    maxlen=channel.EVENTS_MAXLEN,
                    approximate=True,
                )
                pipe.lpush(channel.ack_key(command_id), raw)
                pipe.expire(channel.ack_key(command_id), channel.ACK_TTL)
                pipe.set(channel.done_key(self.env, command_id), result, ex=channel.DONE_TTL)
                app, generation = extra.get("app"), extra.get("generation")
                if app and isinstance(generation, int):
                    pipe.hset(channel.generations_key(self.env), app, self._generation(app))
                pipe.xack(self.stream, channel.AGENT_GROUP, entry_id)
                pipe.execute()
                self.link.ok()
                break
            except redis.RedisError as error_:
                self.link.lost(error_)
                if self.stopping.wait(delay):
                    log.warning("stopping before the acknowledgement of %s could be written", command_id)
                    return
                delay = min(delay * 2, BACKOFF_CAP)
        with self._track_lock:
            self._done[command_id] = result
            while len(self._done) > DONE_MEMORY:
                self._done.popitem(last=False)
        log.info(
            "command %s %s %s: %s%s",
            command_id,
            extra.get("action", "?"),
            extra.get("app", "?"),
            result,
            f" ({error})" if error else "",
        )

    # --- generations --------------------------------------------------------------------

    def _generation(self, app: str) -> int:
        with self._gen_lock:
            return self.generations.get(app, 0)

    def _see_generation(self, app: str, generation: int) -> None:
        with self._gen_lock:
            if generation > self.generations.get(app, 0):
                self.generations[app] = generation

    def _load_generations(self) -> None:
        stored = self.redis.hgetall(channel.generations_key(self.env))
        for app, value in stored.items():
            try:
                self._see_generation(app, int(value))
            except ValueError:
                continue

    # --- receiving commands ---------------------------------------------------------------

    def _ensure_group(self) -> None:
        if self._group_link_generation == self.link.generation:
            return
        try:
            self.redis.xgroup_create(self.stream, channel.AGENT_GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._load_generations()
        # Our own pending entries first (read from id 0), then entries another consumer
        # name left pending for a long time, then new ones.
        self._cursor = "0"
        claimed = self.redis.xautoclaim(
            self.stream, channel.AGENT_GROUP, self.consumer, min_idle_time=CLAIM_IDLE_MS, start_id="0-0", count=1000
        )
        self._group_link_generation = self.link.generation
        for entry_id, fields in claimed[1] if claimed else []:
            self._receive(entry_id, fields)

    def _read_once(self) -> None:
        self._ensure_group()
        block = None if self._cursor == "0" else READ_BLOCK_MS
        try:
            reply = self.redis.xreadgroup(
                channel.AGENT_GROUP, self.consumer, {self.stream: self._cursor}, count=READ_COUNT, block=block
            )
        except redis.ResponseError as error:
            # The stream or its group was deleted (Redis flushed, key removed while we were
            # blocked on it): create them again and carry on.
            if "NOGROUP" in str(error) or "UNBLOCKED" in str(error):
                self._group_link_generation = -1
                return
            raise
        self.link.ok()
        entries = reply[0][1] if reply else []
        if self._cursor == "0":
            if not entries:
                self._cursor = ">"
                return
            self._cursor = entries[-1][0]  # keep paging through our pending entries
        for entry_id, fields in entries:
            try:
                self._receive(entry_id, fields)
            except redis.RedisError:
                raise
            except Exception as error:  # one bad entry must not hold up the rest of the batch
                log.exception("cannot handle command entry %s", entry_id)
                self._acknowledge(f"entry-{entry_id}", entry_id, "error", f"cannot handle this entry: {error!r}"[:500])
        if self._cursor not in ("0", ">") and len(entries) < READ_COUNT:
            self._cursor = ">"

    def _already_done(self, command_id: str) -> bool:
        with self._track_lock:
            if command_id in self._done or command_id in self._inflight:
                return True
        return bool(self.redis.exists(channel.done_key(self.env, command_id)))

    def _receive(self, entry_id: str, fields: dict[str, str] | None) -> None:
        """Validate, de-duplicate, expire, order-check and queue one stream entry."""
        if fields is None:  # trimmed from the stream while pending
            self.redis.xack(self.stream, channel.AGENT_GROUP, entry_id)
            return
        try:
            command = parse_command(entry_id, fields)
        except CommandError as error:
            command_id = fields.get("id", "")
            if not channel.COMMAND_ID_RE.match(command_id) or self._already_done(command_id):
                command_id = f"entry-{entry_id}"
            log.warning("malformed command %s: %s", entry_id, error)
            self._acknowledge(
                command_id,
                entry_id,
                "error",
                str(error),
                request_id=str(fields.get("request_id", ""))[:64],
                app=fields.get("app", "") if is_valid_name(fields.get("app")) else "",
                action=fields.get("action", "")[:20],
            )
            return
        if self._already_done(command.id):
            with self._track_lock:
                running = command.id in self._inflight
                if running:  # confirmed together with the original when it finishes
                    self._duplicates.setdefault(command.id, []).append(entry_id)
            if not running:  # a redelivery of something finished: only confirm receipt
                self.redis.xack(self.stream, channel.AGENT_GROUP, entry_id)
            return
        command.received_at = time.time()
        if command.expires_at < command.received_at:
            self._finish(command, "expired", "the command expired before this worker picked it up")
            self._report_actual(command.app)
            return
        self._see_generation(command.app, command.generation)
        with self._track_lock:
            self._inflight.add(command.id)
        self.lanes.submit(command.app, command)

    # --- carrying out commands ------------------------------------------------------------

    def _finish(self, command: Command, result: str, error: str = "") -> None:
        self._acknowledge(
            command.id,
            command.entry_id,
            result,
            error,
            request_id=command.request_id,
            app=command.app,
            action=command.action,
            generation=command.generation,
            issued_at=command.issued_at,
        )
        with self._track_lock:
            self._inflight.discard(command.id)
            duplicates = self._duplicates.pop(command.id, [])
        if duplicates:
            try:
                self.redis.xack(self.stream, channel.AGENT_GROUP, *duplicates)
            except redis.RedisError as error:  # they come back as pending and are confirmed then
                self.link.lost(error)

    def _report_actual(self, app: str) -> None:
        """After a command that changed nothing, say what the app's state really is here."""
        self.emit_status(app, "running" if app in self._running_apps() else "stopped")

    def _spec(self, app: str) -> dict | None:
        from apps_registry.control.discovery import CacheNotReady

        try:
            spec = self._discovery().get_app(app)
        except CacheNotReady:
            raise CommandError("the configuration cache is not built yet (the supervisor rebuilds it)") from None
        return spec if isinstance(spec, dict) else None

    def _placed_spec(self, app: str) -> dict:
        spec = self._spec(app)
        if spec is None:
            raise CommandError(f"unknown app {app!r}")
        if self.env not in (spec.get("environments") or {}):
            raise CommandError(f"app {app!r} is not placed on environment {self.env!r}")
        return spec

    def _start(self, app: str, spec: dict) -> None:
        runtime = self._runtime()
        self.emit_status(app, "starting")
        try:
            runtime.start_app(spec)
        except Exception as error:
            message = str(error) or error.__class__.__name__
            if not isinstance(error, runtime.AppStartError):
                log.exception("start of %s failed", app)
            self.emit_status(app, "error", message)
            self._failed[app] = self._spec_generation(spec)
            raise CommandError(message) from None
        self._failed.pop(app, None)
        self.emit_status(app, "running")

    def _stop(self, app: str) -> None:
        self.emit_status(app, "stopping")
        self._runtime().stop_app(app)
        self.emit_status(app, "stopped")

    def _execute(self, command: Command) -> None:
        app = command.app
        if command.action == "start":
            self._start(app, self._placed_spec(app))
        elif command.action == "restart":
            spec = self._placed_spec(app)
            if app in self._running_apps():
                self._stop(app)
            self._start(app, spec)
        elif command.action == "stop":
            if app not in self._runtime().app_statuses() and self._spec(app) is None:
                raise CommandError(f"unknown app {app!r}")
            self._stop(app)
        elif command.action == "remove":
            self.emit_status(app, "stopping")
            self._runtime().remove_app(app, drop_data=command.drop_data)
            self.emit_status(app, "stopped")

    def _run_task(self, task: object) -> None:
        close_old_connections()
        try:
            if isinstance(task, Converge):
                self._converge(task)
            elif isinstance(task, _Resume):
                self._resume(task)
            else:
                self._run_command(task)
        finally:
            close_old_connections()

    def _run_command(self, command: Command) -> None:
        if command.generation < self._generation(command.app):
            self._finish(command, "superseded", "a newer request for this app arrived first")
            self._report_actual(command.app)
            return
        try:
            self._execute(command)
        except CommandError as error:
            self._finish(command, "error", str(error))
            return
        except Exception as error:
            log.exception("command %s (%s %s) failed", command.id, command.action, command.app)
            self.emit_status(command.app, "error", f"{command.action} failed: {error}")
            self._finish(command, "error", f"{command.action} failed: {error}")
            return
        self._finish(command, "ok")

    # --- reconciliation -------------------------------------------------------------------

    @staticmethod
    def _spec_generation(spec: dict) -> int:
        try:
            return int(spec.get("generation") or 0)
        except (TypeError, ValueError):
            return 0

    def _desired(self, spec: dict) -> bool:
        placement = (spec.get("environments") or {}).get(self.env)
        return bool(placement and placement.get("desired_running"))

    def reconcile(self) -> None:
        """Queue a convergence step for every app whose desired and actual states differ."""
        from apps_registry.control.discovery import CacheNotReady

        running = self._running_apps()
        try:
            specs = self._discovery().apps_for_environment(self.env)
        except redis.RedisError:
            raise
        except CacheNotReady:
            if self._cache_ready:  # one line per change, not one per interval
                log.info("reconciliation postponed until the supervisor builds the configuration cache")
            self._cache_ready = False
            return
        except Exception:
            log.exception("reconciliation: cannot list this environment's apps")
            return
        if not self._cache_ready:
            log.info("configuration cache available: reconciling %d app(s) placed here", len(specs or []))
        self._cache_ready = True
        for spec in specs or []:
            name = spec.get("name")
            if not is_valid_name(name):
                continue
            desired = self._desired(spec)
            if desired and self._failed.get(name) == self._spec_generation(spec):
                continue  # it failed for this very request: wait for a new one, do not loop
            if desired != (name in running) and not self.lanes.queued(name):
                self.lanes.submit(name, Converge(name, desired))

    def _resume_interrupted(self) -> None:
        """Finish what a crash (SIGKILL) interrupted, from the local state file alone, so it
        works while Redis is down: a start in progress is started again, a stop finished."""
        from worker_agent.hosting import local_state

        for name, entry in self._runtime().app_statuses().items():
            if entry.get("status") == "starting":
                spec = (local_state.app_entry(name) or {}).get("spec")
                if isinstance(spec, dict) and spec.get("name") == name:
                    log.info("resuming the interrupted start of %s", name)
                    self.lanes.submit(name, _Resume(name, spec))
            elif entry.get("status") == "stopping":
                log.info("finishing the interrupted stop of %s", name)
                self.lanes.submit(name, _Resume(name, None))

    def _resume(self, task: _Resume) -> None:
        try:
            if task.spec is None:
                self._stop(task.app)
            else:
                self._start(task.app, task.spec)
        except Exception as error:  # reported as the app's error status by _start
            log.warning("resuming %s failed: %s", task.app, error)

    def _converge(self, task: Converge) -> None:
        """Re-check against fresh state when the lane gets to it, then act."""
        try:
            spec = self._spec(task.app)
        except redis.RedisError as error:
            self.link.lost(error)
            return
        except CommandError:
            return
        if spec is None or int(spec.get("generation") or 0) < self._generation(task.app):
            return  # the cache is behind a command this agent already saw
        desired = self._desired(spec)
        running = task.app in self._running_apps()
        if desired and self._failed.get(task.app) == self._spec_generation(spec):
            return
        try:
            if desired and not running:
                log.info("reconciliation: starting %s", task.app)
                self._start(task.app, spec)
            elif not desired and running:
                log.info("reconciliation: stopping %s", task.app)
                self._stop(task.app)
        except CommandError as error:
            log.warning("reconciliation of %s: %s", task.app, error)
        except Exception:
            log.exception("reconciliation of %s failed", task.app)

    # --- threads ---------------------------------------------------------------------------

    def _lease_loop(self) -> None:
        registered_for = -1
        next_heartbeat = 0.0
        delay = BACKOFF_FIRST
        while not self.stopping.is_set():
            try:
                now = time.monotonic()
                if registered_for != self.link.generation:
                    self._announce("register")
                    self.link.ok()
                    registered_for = self.link.generation
                    next_heartbeat = now + self.config.heartbeat_interval
                    for app in self._running_apps():
                        self.emit_status(app, "running")
                elif now >= next_heartbeat:
                    self._announce("heartbeat")
                    next_heartbeat = now + self.config.heartbeat_interval
                else:
                    self._renew_lease(keys=[channel.seen_key()], args=[self.env])
                self.link.ok()
                delay = BACKOFF_FIRST
                wait = self.config.lease_interval
            except redis.RedisError as error:
                self.link.lost(error)
                registered_for = -1
                wait, delay = delay, min(delay * 2, BACKOFF_CAP)
            self.stopping.wait(wait)
        try:
            self._deregister()
            log.info("deregistered environment %s", self.env)
        except redis.RedisError as error:
            log.warning("could not deregister (Redis unavailable: %s)", error)

    def _handle_signal(self, signum, frame) -> None:
        if not self.stopping.is_set():
            log.info("received %s: stopping", signal.Signals(signum).name)
        self.stopping.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._handle_signal)
        signal.signal(signal.SIGINT, self._handle_signal)
        log.info(
            "agent for environment %s starting (version %s, %d command lanes)",
            self.env,
            self.version,
            self.config.command_concurrency,
        )
        try:
            self._resume_interrupted()
        except Exception:
            log.exception("cannot read the local state to resume interrupted work")
        lease = threading.Thread(target=self._lease_loop, name="lease", daemon=True)
        lease.start()
        delay = BACKOFF_FIRST
        while not self.stopping.is_set():
            try:
                self._read_once()
                if time.monotonic() >= self._next_reconcile:
                    self._next_reconcile = time.monotonic() + self.config.reconcile_interval
                    self.reconcile()
                delay = BACKOFF_FIRST
            except redis.ResponseError as error:  # Redis answered, but refused a command
                log.warning("Redis refused a command: %s", error)
                self.stopping.wait(delay)
                delay = min(delay * 2, BACKOFF_CAP)
            except redis.RedisError as error:
                self.link.lost(error)
                self._next_reconcile = 0.0  # converge again as soon as Redis is back
                self.stopping.wait(delay)
                delay = min(delay * 2, BACKOFF_CAP)
            except Exception:  # never die on input; log and carry on
                log.exception("agent loop error")
                self.stopping.wait(delay)
                delay = min(delay * 2, BACKOFF_CAP)
        lease.join(timeout=5)
        if not self.lanes.close(SHUTDOWN_GRACE):
            log.warning("commands still running after %g s; they will run again at the next start", SHUTDOWN_GRACE)
        log.info("agent for environment %s stopped", self.env)
        return 0
