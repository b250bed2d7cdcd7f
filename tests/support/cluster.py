"""A real cluster for tests: a supervisor (gunicorn) and two workers ``env_a``/``env_b``
(gunicorn + ``run_worker`` each), on loopback, with the session's Redis and PostgreSQL.

tests/conftest.py imports the fixtures: request ``cluster`` (session-scoped, started on first
use) or, better, ``cluster_logs`` (the same cluster, plus log tails on failure and any
stopped/killed worker process brought back after the test)::

    def test_something(cluster_logs):
        cluster = cluster_logs
        worker = cluster.workers["env_a"]
        worker.kill_agent(); worker.start_agent(); ...

Databases: the supervisor gunicorn uses ``<RUN_ID>_supervisor_cluster`` (migrated here);
each worker its own ``<RUN_ID>_worker_<x>``; hosted apps get ``<RUN_ID>_<app>`` on the same
PostgreSQL server for every worker, so an app placed on both environments shares its data.
Short liveness settings: lease 0.5 s, offline after 3 s, heartbeat every 5 s.

The in-process test settings (tests/settings.py) use the same Redis database and key prefix,
so a test can act as the supervisor itself (actions → commands → events.ingest()). The
supervisor gunicorn reads the workers' events through its own consumer group
(APP_EVENTS_GROUP=supervisor_cluster), so it and in-process code each see every event.

Reconciliation runs every 2 s on the workers: an app whose cached spec says
``desired_running: false`` for an environment is stopped there, so start registry apps
through requests/commands rather than ``manage.py host_app``.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from tests.support import services
from tests.support.processes import PYTHON, Process, free_port, gunicorn, http_ok, manage, wait_until

LEASE_INTERVAL = 0.5
OFFLINE_AFTER = 3.0
HEARTBEAT_INTERVAL = 5.0
RECONCILE_INTERVAL = 2.0
# Small, so that a test can overflow an app's log stream quickly.
APP_LOG_LINES = 50
WORKER_NAMES = ("env_a", "env_b")


def _create_database(name: str, template: str = "") -> None:
    with psycopg.connect(
        host=services.PG_HOST, port=services.PG_PORT, user=services.PG_USER, dbname="postgres", autocommit=True
    ) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))


def supervisor_environ() -> dict[str, str]:
    return {
        **services.supervisor_test_environ(),
        "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",
        "DB_DATABASE": f"{services.RUN_ID}_supervisor_cluster",
        # Its own consumer group: it and in-process tests (another database) each see every event.
        "APP_EVENTS_GROUP": "supervisor_cluster",
        "APP_STORAGE_DIR": str(services.storage_dir() / "supervisor"),
        "APP_LEASE_INTERVAL": str(LEASE_INTERVAL),
        "APP_OFFLINE_AFTER": str(OFFLINE_AFTER),
        "APP_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
    }


def worker_environ(name: str, port: int) -> dict[str, str]:
    env = {
        **services.supervisor_test_environ(),
        "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",
        "APP_MODE": "worker",
        "APP_PROCESS_ADAPTER": "local",
        "APP_DISCOVERY_ADAPTER": "remote",
        "DB_DATABASE": f"{services.RUN_ID}_worker_{name.removeprefix('env_')}",
        "ENVIRONMENT_NAME": name,
        "ENVIRONMENT_URL": f"http://127.0.0.1:{port}",
        "APP_STORAGE_DIR": str(services.storage_dir() / name),
        "APP_LEASE_INTERVAL": str(LEASE_INTERVAL),
        "APP_OFFLINE_AFTER": str(OFFLINE_AFTER),
        "APP_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
        "APP_RECONCILE_INTERVAL": str(RECONCILE_INTERVAL),
        "APP_COMMAND_CONCURRENCY": "4",
        "APP_LOG_LINES": str(APP_LOG_LINES),
    }
    # A worker never holds the supervisor's private key: it pins the published public key.
    env.pop("SUPERVISOR_KEY", None)
    return env


class Worker:
    """One environment: its web server and its agent, each stoppable on its own."""

    def __init__(self, name: str, log_dir: Path):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = worker_environ(name, self.port)
        self.log_dir = log_dir
        self.web = gunicorn(f"{name}-web", self.port, self.env, log_dir, workers=2, threads=4)
        self.agent = self._agent_process()

    def _agent_process(self) -> Process:
        return Process(f"{self.name}-agent", [PYTHON, "manage.py", "run_worker"], self.env, self.log_dir)

    @property
    def state_file(self) -> Path:
        return Path(self.env["APP_STORAGE_DIR"]) / "runtime" / f"{self.name}.json"

    def start_agent(self) -> Process:
        if not self.agent.alive():
            self.agent = self._agent_process().start()
        return self.agent

    def stop_agent(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the agent and return its exit status."""
        return self.agent.stop(timeout=timeout)

    def kill_agent(self) -> None:
        self.agent.kill()

    def start_web(self) -> Process:
        if not self.web.alive():
            self.web = gunicorn(f"{self.name}-web", self.port, self.env, self.log_dir, workers=2, threads=4).start()
        return self.web

    def stop_web(self) -> None:
        self.web.stop()

    def kill_web(self) -> None:
        self.web.kill()

    def wait_web(self, timeout: float = 30.0) -> None:
        wait_until(lambda: http_ok(f"{self.url}/healthz"), timeout=timeout, interval=0.1, message=f"{self.name} web")

    def key(self):
        """The key this worker's agent generated on its first start (its identity)."""
        from tests.support.identity import worker_key

        return worker_key(self.env["APP_STORAGE_DIR"], self.name)

    def wait_registered(self, timeout: float = 30.0) -> None:
        from tests.support.identity import lease_at

        def leased() -> bool:
            try:
                return (lease_at(self.name, self.key()) or 0) > time.time() - OFFLINE_AFTER
            except FileNotFoundError:  # not started far enough to have its key yet
                return False

        wait_until(
            leased,
            timeout=timeout,
            interval=0.05,
            message=f"{self.name} agent lease",
        )

    def ensure_running(self) -> None:
        """Bring back whatever a test stopped or killed."""
        self.start_web()
        self.start_agent()
        self.wait_web()
        self.wait_registered()

    def stop(self) -> None:
        self.agent.stop()
        self.web.stop()


class Cluster:
    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.supervisor_env = {**supervisor_environ(), "APP_TEST_SUPERVISOR_URL": self.url}
        self.supervisor = gunicorn("supervisor", self.port, self.supervisor_env, log_dir, workers=1, threads=4)
        self.workers = {name: Worker(name, log_dir) for name in WORKER_NAMES}

    @property
    def env_a(self) -> Worker:
        return self.workers["env_a"]

    @property
    def env_b(self) -> Worker:
        return self.workers["env_b"]

    def start(self) -> Cluster:
        # Every role migrates the same registry schema: migrate the supervisor's database once,
        # then copy it (CREATE DATABASE … TEMPLATE) for the workers, which is much cheaper.
        _create_database(self.supervisor_env["DB_DATABASE"])
        migration = manage(["migrate", "--no-input", "-v", "0"], self.supervisor_env, timeout=180)
        if migration.returncode:
            raise RuntimeError(f"migrate failed:\n{migration.stdout}{migration.stderr}")
        for env in (self.supervisor_env, *(worker.env for worker in self.workers.values())):
            if env is not self.supervisor_env:
                _create_database(env["DB_DATABASE"], template=self.supervisor_env["DB_DATABASE"])
            Path(env["APP_STORAGE_DIR"]).mkdir(parents=True, exist_ok=True)
        self.supervisor.start()
        for worker in self.workers.values():
            worker.web.start()
            worker.agent.start()
        wait_until(lambda: http_ok(f"{self.url}/healthz"), timeout=60, interval=0.1, message="supervisor web")
        for worker in self.workers.values():
            worker.wait_web(timeout=60)
            worker.wait_registered(timeout=60)
        return self

    def ensure_config_cache(self, timeout: float = 10.0) -> None:
        """Have the supervisor rebuild the configuration cache if a test emptied Redis (its
        middleware rebuilds on a request when the marker is missing)."""
        from apps_registry.control import keys, redis_client

        marker = keys.cfg_built()
        client = redis_client.get()
        wait_until(
            lambda: client.exists(marker) or (http_ok(f"{self.url}/healthz") and client.exists(marker)),
            timeout=timeout,
            interval=0.2,
            message="configuration cache built",
        )

    def processes(self) -> list[Process]:
        return [self.supervisor, *(p for w in self.workers.values() for p in (w.web, w.agent))]

    def log_tails(self, lines: int = 60) -> str:
        parts = []
        for process in self.processes():
            tail = "\n".join(process.log().splitlines()[-lines:])
            parts.append(f"----- {process.name} ({process.log_path}) -----\n{tail}")
        return "\n".join(parts)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every process at once, then wait; SIGKILL what is still there."""
        processes = [p for p in self.processes() if p.alive()]
        for process in processes:
            process.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
            process.reap_group()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Cluster:
    log_dir = tmp_path_factory.mktemp("cluster-logs")
    running = Cluster(log_dir)
    try:
        running.start()
    except BaseException:
        print(running.log_tails())
        running.stop()
        raise
    yield running
    running.stop()


@pytest.fixture
def cluster_logs(request, cluster: Cluster) -> Cluster:
    """The cluster, its configuration cache built (an earlier test may have emptied Redis),
    every process's log tail printed if the test fails, and any worker process the test
    stopped or killed brought back afterwards."""
    failed_before = request.session.testsfailed
    cluster.ensure_config_cache()
    yield cluster
    if request.session.testsfailed > failed_before:
        print(cluster.log_tails())
    for worker in cluster.workers.values():
        worker.ensure_running()
