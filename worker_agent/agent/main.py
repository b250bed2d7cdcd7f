"""The worker's agent (``manage.py run_worker``), wired from its parts:

- ``link``: the Redis connection and its retry policy;
- ``reporter``: everything written to ``P:events`` (and the lease);
- ``lease``: the lease thread (lease, heartbeat, re-registration, deregistration);
- ``inbox``: the main thread reads this environment's command stream (blocking XREADGROUP,
  1 s) and hands each command to the app's lane;
- ``lanes``: a bounded pool; commands for different apps run concurrently, commands for one
  app run one at a time in the order they were issued;
- ``executor``: carries a command out through the hosting runtime, then acknowledges it;
- ``reconcile``: converges the apps placed here towards the configuration cache.

Nothing read from Redis can kill the agent: a bad message is acknowledged as an error.
When Redis goes away the hosted apps keep serving (web processes read only the local state
file); the agent logs one line when the link is lost and one when it is back.
"""

from __future__ import annotations

import logging
import signal
import threading
import tomllib
from collections.abc import Callable
from types import FrameType

import redis
from django.conf import settings
from django.db import close_old_connections

from worker_agent.agent.commands import Delivery
from worker_agent.agent.epoch import EpochGuard
from worker_agent.agent.executor import Executor, running_apps
from worker_agent.agent.identity import Identity
from worker_agent.agent.inbox import Generations, Inbox
from worker_agent.agent.lanes import AppLanes
from worker_agent.agent.lease import run_lease
from worker_agent.agent.link import Backoff, RedisLink
from worker_agent.agent.reconcile import Reconciler
from worker_agent.agent.reporter import Reporter
from worker_agent.hosting import local_state

log = logging.getLogger("worker_agent.agent")

# On SIGTERM, commands already running get this long to finish before the agent exits (under
# the usual 10 s stop grace of Docker); an unfinished command stays pending and runs again.
SHUTDOWN_GRACE = 8.0
# At most this many non-blocking reads of waiting commands before a due reconciliation.
MAX_CATCH_UP_READS = 20


def _version() -> str:
    try:
        with open(settings.BASE_DIR / "pyproject.toml", "rb") as handle:
            return str(tomllib.load(handle)["project"]["version"])
    except (OSError, KeyError, ValueError):
        return "unknown"


class Agent:
    def __init__(self) -> None:
        config = settings.APP_CONFIG
        self.config = config
        self.env = config.environment_name
        self.version = _version()
        self.stopping = threading.Event()
        self.link = RedisLink(self.stopping)
        self.generations = Generations()
        self.identity = Identity(config)
        self.reporter = Reporter(
            self.link,
            env=self.env,
            url=config.environment_url,
            proxy_url=config.environment_proxy_url,
            version=self.version,
            running_apps=running_apps,
            identity=self.identity,
        )
        self.lanes = AppLanes(config.command_concurrency, self._run_task)
        self.inbox = Inbox(
            self.link, self.reporter, self.generations, env=self.env, submit=self._queue_command, identity=self.identity
        )
        self.executor = Executor(
            env=self.env,
            reporter=self.reporter,
            generations=self.generations,
            finish=self.inbox.finish,
            epochs=EpochGuard(local_state.state_path().with_suffix(".epoch")),
        )
        self.reconciler = Reconciler(
            env=self.env,
            link=self.link,
            executor=self.executor,
            generations=self.generations,
            submit=self.lanes.submit,
            queued=self.lanes.queued,
            interval=config.reconcile_interval,
        )

    def _queue_command(self, delivery: Delivery) -> None:
        self.lanes.submit(delivery.command.app, lambda: self.executor.run(delivery))

    @staticmethod
    def _run_task(task: Callable[[], None]) -> None:
        # Lane threads use the database (hosted apps' schemas): never on a stale connection.
        close_old_connections()
        try:
            task()
        finally:
            close_old_connections()

    def _handle_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping.is_set():
            log.info("received %s: stopping", signal.Signals(signum).name)
        self.stopping.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._handle_signal)
        signal.signal(signal.SIGINT, self._handle_signal)
        log.info(
            "agent for environment %s starting (version %s, %d command lanes, key %s)",
            self.env,
            self.version,
            self.config.command_concurrency,
            self.identity.fingerprint,
        )
        try:
            self.reconciler.resume_interrupted()
        except Exception:
            log.exception("cannot read the local state to resume interrupted work")
        lease = threading.Thread(
            target=run_lease,
            args=(self.link, self.reporter, self.stopping),
            kwargs={"lease_interval": self.config.lease_interval, "heartbeat_interval": self.config.heartbeat_interval},
            name="lease",
            daemon=True,
        )
        lease.start()
        backoff = Backoff(self.stopping)
        while not self.stopping.is_set():
            try:
                self.inbox.read_once()
                if self.reconciler.is_due():
                    # Commands that arrived while this agent could not read (frozen, or Redis
                    # away) go to their lanes first: reconciling before them did their work
                    # twice, the reconciliation's step and then the command (bench/convergence_bench.py).
                    for _batch in range(MAX_CATCH_UP_READS):
                        if not self.inbox.read_once(wait=False):
                            break
                    self.reconciler.due()
                backoff.reset()
            except redis.ResponseError as error:  # Redis answered, but refused a command
                log.warning("Redis refused a command: %s", error)
                backoff.wait()
            except redis.RedisError as error:
                self.link.lost(error)
                self.reconciler.soon()  # converge again as soon as Redis is back
                backoff.wait()
            except Exception:  # never die on input; log and carry on
                log.exception("agent loop error")
                backoff.wait()
        lease.join(timeout=5)
        if not self.lanes.close(SHUTDOWN_GRACE):
            log.warning("commands still running after %g s; they will run again at the next start", SHUTDOWN_GRACE)
        log.info("agent for environment %s stopped", self.env)
        return 0
