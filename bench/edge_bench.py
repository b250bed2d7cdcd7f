"""The edge (issue 14): what a supervisor holds and how well it keeps tenants apart.

    .venv/bin/python bench/edge_bench.py [--window 5] [--rounds 2] [--connections 5000]
                                         [--readers 200] [--seconds 5]

Set-up, all on loopback, as bench/proxy_bench.py's (whose helpers it uses): PostgreSQL
databases for a registry, one worker environment and three hosted apps (``crm`` with 25
contacts, ``other``, ``busy`` with 25 contacts and a 15 MiB attachment), each with an admin
user; a worker gunicorn and a supervisor gunicorn of the repository's gunicorn.conf.py (2
processes each, gevent: the default for both roles); nginx (Debian package) as a reverse proxy
to the same worker, the reference where one applies. Each figure is measured in this one run,
with its reference in windows interleaved with the loaded ones:

  (a) idle kept-alive connections: ``--connections`` sockets, each after one request, held by a
      second supervisor whose GUNICORN_KEEPALIVE is 300 s (the default 5 s closes an idle
      connection by design); the admin login page's p50 while they are held against before
      and after (target: all held, p50 <= 2x). ``ulimit -n`` is raised to its hard limit here.
  (b) noisy neighbour: ``wrk -c48`` on ``busy``'s changelist; probes of ``other``'s login page
      and of the supervisor's admin, p50 in loaded windows against idle ones (target <= 2x;
      x12 before). The same load and probe through nginx, which has no per-app cap, beside it.
  (c) ``--readers`` slow readers of ``busy``'s 15 MiB attachment (a few KiB/s each); the same
      probes (target <= 2x, no failure), and how many readers streamed or were refused busy.
  (d) throughput (``wrk -c8``) on ``crm``'s changelist and its tiny ``/apps/crm/`` page,
      direct, through the supervisor and through nginx (targets 0.9 and 0.85 of direct); and
      direct to a second worker gunicorn of the same environment on gthread (the workers'
      former class), the reference for their move to gevent.

Prints one JSON document per figure; bench/report.py renders them into docs/benchmarks.md.
Every loop is bounded in count and time; every process, database and key is removed at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import proxy_bench as px  # bench/ is this script's directory: the shared set-up helpers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.processes import free_port, gunicorn, http_ok, wait_until  # noqa: E402

APPS = {"crm": 25, "other": 3, "busy": 25}
ATTACHMENT = "contacts/big.bin"
ATTACHMENT_BYTES = 15 * 1024 * 1024
PROBE_TIMEOUT = 10.0


def rss_kib(pid: int) -> int:
    """Resident memory of a process and its descendants, in KiB."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


class Prober(threading.Thread):
    """GETs one URL over and over on a kept-alive connection (a new one after a failure);
    records (time, seconds, ok). ``expect`` is the status a healthy answer has."""

    def __init__(self, port: int, path: str, expect: int = 200, headers: dict | None = None, pause: float = 0.05):
        super().__init__(daemon=True)
        self.port, self.path, self.expect, self.headers, self.pause = port, path, expect, headers or {}, pause
        self.samples: list[tuple[float, float, bool]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        conn = None
        while not self.stopping.is_set():
            began = time.monotonic()
            ok = False
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=PROBE_TIMEOUT)
                conn.request("GET", self.path, headers=self.headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == self.expect
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
            self.samples.append((began, time.monotonic() - began, ok))
            self.stopping.wait(self.pause)
        if conn is not None:
            conn.close()

    def window(self, start: float, end: float) -> tuple[list[float], int]:
        """Latencies (ms) of the probes that began in [start, end), and how many failed."""
        chosen = [(s, ok) for began, s, ok in self.samples if start <= began < end]
        return [1000 * s for s, ok in chosen if ok], sum(1 for _, ok in chosen if not ok)


def p50(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def compare(probers: dict[str, Prober], windows: dict[str, list[tuple[float, float]]]) -> dict:
    """Per probe: p50 and failures in each kind of window; the ratio of each kind to ``idle``."""
    result = {}
    for name, prober in probers.items():
        row: dict = {}
        for kind, spans in windows.items():
            latencies, failures = [], 0
            for start, end in spans:
                seen, failed = prober.window(start, end)
                latencies += seen
                failures += failed
            row[kind] = {"p50_ms": p50(latencies), "answered": len(latencies), "failures": failures}
        idle = row["idle"]["p50_ms"]
        for kind in windows:
            if kind != "idle" and idle and row[kind]["p50_ms"]:
                row[kind]["ratio"] = round(row[kind]["p50_ms"] / idle, 2)
        result[name] = row
    return result


def timed(action, windows: list[tuple[float, float]]):
    start = time.monotonic()
    value = action()
    windows.append((start, time.monotonic()))
    return value


def idle(seconds: float) -> None:
    time.sleep(seconds)  # a window with no load: the probes alone


# --- (a) idle kept-alive connections ---------------------------------------------------------------


def open_kept_alive(port: int, count: int, deadline: float) -> tuple[list[socket.socket], str]:
    """``count`` connections that each had one answered request and stay open; stops early
    (and says why) at the first refusal or at ``deadline``."""
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    held: list[socket.socket] = []
    while len(held) < count:
        if time.monotonic() > deadline:
            return held, "deadline"
        batch: list[socket.socket] = []
        try:
            for _ in range(min(250, count - len(held))):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                sock.sendall(request)
                batch.append(sock)
        except OSError as error:
            for sock in batch:
                sock.close()
            return held, f"{type(error).__name__}: {error}"
        for sock in batch:
            try:
                answer = sock.recv(4096)
            except OSError:
                answer = b""
            if answer.startswith(b"HTTP/1.1 200"):
                held.append(sock)
            else:
                sock.close()
                return held, f"answered {answer[:40]!r}"
    return held, ""


def still_open(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has not closed (a closed one reads as EOF at once)."""
    alive = 0
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        closed = {key.fileobj for key, _ in selector.select(timeout=0.5)}
    for sock in socks:
        if sock not in closed:
            alive += 1
            continue
        try:
            if sock.recv(1):
                alive += 1
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


def kept_alive(port: int, supervisor_pid: int, count: int, window: float, nofile: int) -> dict:
    admin = Prober(port, "/admin/login/")
    admin.start()
    windows: dict[str, list] = {"idle": [], "held": []}
    try:
        timed(lambda: idle(window), windows["idle"])
        before = rss_kib(supervisor_pid)
        opened = time.monotonic()
        socks, stopped = open_kept_alive(port, count, time.monotonic() + 120)
        open_seconds = time.monotonic() - opened
        after = rss_kib(supervisor_pid)
        try:
            timed(lambda: idle(window), windows["held"])
            held = still_open(socks)
        finally:
            for sock in socks:
                sock.close()
        timed(lambda: idle(window), windows["idle"])
    finally:
        admin.stopping.set()
        admin.join(PROBE_TIMEOUT + 5)
    probes = compare({"admin": admin}, windows)["admin"]
    return {
        "figure": "kept_alive",
        "asked": count,
        "opened": len(socks),
        "held_at_end": held,
        "stopped_because": stopped,
        "open_seconds": round(open_seconds, 1),
        "rss_kib_per_connection": round((after - before) / max(1, len(socks)), 1),
        "admin": probes,
        "nofile": nofile,
        "keepalive_s": 300,
    }


# --- (b) noisy neighbour, (c) slow readers ---------------------------------------------------------


def wrk_load(url: str, cookie: str, seconds: float, connections: int = 48) -> dict:
    return px.wrk(url, cookie, max(1, round(seconds)), connections)


def noisy_neighbour(ports: dict[str, int], cookies: dict[str, str], window: float, rounds: int) -> dict:
    probers = {
        "other app via supervisor": Prober(ports["supervisor"], "/apps/other/admin/login/"),
        "supervisor admin": Prober(ports["supervisor"], "/admin/login/"),
        "other app via nginx": Prober(ports["nginx"], "/apps/other/admin/login/"),
    }
    for prober in probers.values():
        prober.start()
    windows: dict[str, list] = {"idle": [], "loaded via supervisor": [], "loaded via nginx": []}
    loads: dict[str, list[dict]] = {"supervisor": [], "nginx": []}
    page = "/apps/busy/admin/contacts/contact/"
    try:
        for _ in range(rounds):
            for via in ("supervisor", "nginx"):
                timed(lambda: idle(window), windows["idle"])
                url = f"http://127.0.0.1:{ports[via]}{page}"
                loads[via].append(
                    timed(lambda url=url: wrk_load(url, cookies["busy"], window), windows[f"loaded via {via}"])
                )
        timed(lambda: idle(window), windows["idle"])
    finally:
        for prober in probers.values():
            prober.stopping.set()
        for prober in probers.values():
            prober.join(PROBE_TIMEOUT + 5)
    return {
        "figure": "noisy_neighbour",
        "clients": 48,
        "probes": compare(probers, windows),
        "load": {
            via: {"rps": round(statistics.median(r["rps"] for r in runs), 1), "not_2xx": sum(r["bad"] for r in runs)}
            for via, runs in loads.items()
        },
    }


class SlowReaders:
    """``count`` connections downloading the attachment, each reading ``chunk`` bytes every
    ``every`` seconds (a small receive buffer, so the server feels it), until stopped."""

    def __init__(self, port: int, path: str, cookie: str, count: int, chunk: int = 4096, every: float = 0.5):
        self.port, self.path, self.cookie, self.count, self.chunk, self.every = port, path, cookie, count, chunk, every
        self.statuses: dict[str, int] = {}
        self.bytes_read = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SlowReaders:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        request = f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {self.cookie}\r\n\r\n".encode()
        socks: list[socket.socket] = []
        heads: dict[socket.socket, bytes] = {}
        try:
            for _ in range(self.count):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
                sock.settimeout(10)
                try:
                    sock.connect(("127.0.0.1", self.port))
                    sock.sendall(request)
                except OSError:
                    self.statuses["connect failed"] = self.statuses.get("connect failed", 0) + 1
                    sock.close()
                    continue
                sock.setblocking(False)
                socks.append(sock)
                heads[sock] = b""
            while not self._stop.wait(self.every):
                for sock in list(socks):
                    try:
                        data = sock.recv(self.chunk)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if sock in heads and len(heads[sock]) < 12:
                        heads[sock] += data
                        if len(heads[sock]) >= 12 or not data:
                            status = heads[sock][9:12].decode(errors="replace") or "closed"
                            self.statuses[status] = self.statuses.get(status, 0) + 1
                            heads.pop(sock)
                    self.bytes_read += len(data)
                    if not data:
                        socks.remove(sock)
                        sock.close()
        finally:
            for sock in socks:
                sock.close()


def slow_readers(ports: dict[str, int], cookies: dict[str, str], count: int, window: float, rounds: int) -> dict:
    probers = {
        "other app via supervisor": Prober(ports["supervisor"], "/apps/other/admin/login/"),
        "supervisor admin": Prober(ports["supervisor"], "/admin/login/"),
    }
    for prober in probers.values():
        prober.start()
    windows: dict[str, list] = {"idle": [], "slow readers": []}
    statuses: dict[str, int] = {}
    read = 0
    path = f"/apps/busy/files/{ATTACHMENT}"
    try:
        for _ in range(rounds):
            timed(lambda: idle(window), windows["idle"])
            with SlowReaders(ports["supervisor"], path, cookies["busy"], count) as readers:
                timed(lambda: idle(window), windows["slow readers"])
            for status, seen in readers.statuses.items():
                statuses[status] = statuses.get(status, 0) + seen
            read += readers.bytes_read
        timed(lambda: idle(window), windows["idle"])
    finally:
        for prober in probers.values():
            prober.stopping.set()
        for prober in probers.values():
            prober.join(PROBE_TIMEOUT + 5)
    return {
        "figure": "slow_readers",
        "readers": count,
        "rounds": rounds,
        "reader_statuses": statuses,
        "kib_read": read // 1024,
        "probes": compare(probers, windows),
    }


# --- (d) throughput ----------------------------------------------------------------------------


def throughput(ports: dict[str, int], pids: dict[str, int], cookie: str, seconds: int, rounds: int) -> dict:
    pages = {"changelist": "/apps/crm/admin/contacts/contact/", "tiny": "/apps/crm/"}
    # "direct, gthread": a second worker gunicorn on the same environment with the former
    # default class, the reference for the workers' move to gevent.
    targets = ("direct", "direct, gthread", "supervisor", "nginx")
    runs: dict[str, dict[str, list[float]]] = {page: {t: [] for t in targets} for page in pages}
    for _ in range(rounds):
        for page, path in pages.items():
            for target in targets:
                result = px.wrk(f"http://127.0.0.1:{ports[target]}{path}", cookie, seconds, 8)
                runs[page][target].append(result["rps"])
    out: dict = {"figure": "throughput", "connections": 8, "seconds": seconds, "rounds": rounds}
    for page, by_target in runs.items():
        direct = statistics.median(by_target["direct"])
        out[page] = {
            target: {"rps": round(statistics.median(rps), 1), "ratio": round(statistics.median(rps) / direct, 2)}
            for target, rps in by_target.items()
        }
    return out


# --- set-up --------------------------------------------------------------------------------------


def raise_nofile() -> int:
    """Descriptors for the held connections (and for the gunicorns started from here)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main() -> None:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=float, default=5.0, help="seconds per measuring window")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--readers", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=5, help="seconds per throughput run")
    parser.add_argument("--figures", default="a,b,c,d", help="which of (a)-(d) to measure")
    parser.add_argument("--worker-class", default="", help="the worker's gunicorn class (default: gunicorn.conf.py's)")
    parser.add_argument("--app-cap", default="", help="the supervisor's PROXY_APP_CONCURRENCY (default: its own)")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is needed: apt-get install -y {tool}")
    nofile = raise_nofile()
    print(f"ulimit -n raised to {nofile} for this bench and the servers it starts", file=sys.stderr)

    tag = f"benchedge{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-edge-"))
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi", "worker", "supervisor"):
        (tmp / sub).mkdir()
    ports = {name: free_port() for name in ("direct", "direct, gthread", "supervisor", "kept_alive", "nginx")}
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")
    worker_env, supervisor_env = px.bench_environments(tag, tmp, ports["direct"], redis_url)
    if args.worker_class:
        worker_env["GUNICORN_WORKER_CLASS"] = args.worker_class
    if args.app_cap:
        supervisor_env["PROXY_APP_CONCURRENCY"] = args.app_cap
        # manage.py reads it without gunicorn.conf.py, which sets PROXY_CONCURRENCY (200 under gevent).
        supervisor_env["PROXY_CONCURRENCY"] = str(max(200, int(args.app_cap)))
    processes = []
    nginx: subprocess.Popen | None = None
    try:
        for env in (worker_env, supervisor_env):
            px.pg_exec(f'CREATE DATABASE "{env["DB_DATABASE"]}"')
            px.manage(["migrate", "--no-input", "-v", "0"], env)
        for app, contacts in APPS.items():
            px.manage(
                ["host_app", app, "--modules", "contacts,tasks", "--admin-user", "bench", "--admin-password", "pw"],
                worker_env,
            )
            for i in range(contacts):
                px.pg_exec(
                    "INSERT INTO contacts_contact (name, email, phone, company, notes, attachment, created_at,"
                    " updated_at) VALUES (%s, %s, '', %s, '', '', now(), now())",
                    f"{tag}_{app}",
                    (f"Contact {i:02d}", f"c{i}@example.org", f"Company {i % 5}"),
                )
        attachment = tmp / "worker" / "media" / "busy" / ATTACHMENT
        attachment.parent.mkdir(parents=True, exist_ok=True)
        attachment.write_bytes(os.urandom(ATTACHMENT_BYTES))
        names = list(APPS)
        px.manage(
            [
                "shell",
                "-c",
                "from apps_registry.registry import actions;"
                f"env = actions.register_environment(name='env_bench', url='http://127.0.0.1:{ports['direct']}');"
                f"[actions.create_application(name=n, environments=[env], via='bench') for n in {names!r}];"
                f"[actions.record_app_status(n, 'env_bench', 'running') for n in {names!r}]",
            ],
            supervisor_env,
        )
        worker = gunicorn("worker", ports["direct"], worker_env, tmp, workers=2)
        supervisor = gunicorn("supervisor", ports["supervisor"], supervisor_env, tmp, workers=2)
        # (a) only: idle connections are the point, so they may stay idle (300 s instead of 5 s).
        kept = gunicorn(
            "supervisor-kept-alive",
            ports["kept_alive"],
            {**supervisor_env, "GUNICORN_KEEPALIVE": "300"},
            tmp,
            workers=2,
        )
        threaded = gunicorn(
            "worker-gthread",
            ports["direct, gthread"],
            {**worker_env, "GUNICORN_WORKER_CLASS": "gthread"},
            tmp,
            workers=2,
        )
        for process in (worker, threaded, supervisor, kept):
            process.overrides["GUNICORN_ACCESS_LOG"] = "off"
            processes.append(process.start())
        conf = tmp / "nginx.conf"
        conf.write_text(px.NGINX_CONF.format(tmp=tmp, worker_port=ports["direct"], port=ports["nginx"]))
        nginx = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for port in ports.values():
            wait_until(lambda port=port: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=60, message=str(port))
        cookies = {app: px.login(ports["direct"], app) for app in ("crm", "busy")}
        for name in ("direct", "supervisor", "nginx"):
            status, body = px.fetch(f"http://127.0.0.1:{ports[name]}/apps/crm/admin/contacts/contact/", cookies["crm"])
            assert status == 200 and body.count(b"Contact ") >= 25, (name, status)
            status, _ = px.fetch(f"http://127.0.0.1:{ports[name]}/apps/other/admin/login/", "")
            assert status == 200, (name, status)
        for name in ("direct", "supervisor", "nginx"):  # warm every process and pool
            px.wrk(f"http://127.0.0.1:{ports[name]}/apps/crm/admin/contacts/contact/", cookies["crm"], 2, 8)

        pids = {"worker": worker.pid, "supervisor": supervisor.pid}
        wanted = set(args.figures.split(","))
        figures = []
        if "a" in wanted:
            figures.append(kept_alive(ports["kept_alive"], kept.pid, args.connections, args.window, nofile))
        if "b" in wanted:
            figures.append(noisy_neighbour(ports, cookies, args.window, args.rounds))
        if "c" in wanted:
            figures.append(slow_readers(ports, cookies, args.readers, args.window, args.rounds))
        if "d" in wanted:
            figures.append(throughput(ports, pids, cookies["crm"], args.seconds, args.rounds))
        for figure in figures:
            figure["worker_class"] = args.worker_class or "gunicorn.conf.py (gevent)"
            figure["app_cap"] = args.app_cap or "default"
        for figure in figures:
            print(json.dumps(figure))
        print(f"load average at the end: {os.getloadavg()}", file=sys.stderr)
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(timeout=10)
        for process in processes:
            process.stop()
        for db in px.pg_exec("SELECT datname FROM pg_database WHERE datname LIKE %s", params=(f"{tag}\\_%",)):
            px.pg_exec(f'DROP DATABASE IF EXISTS "{db[0]}" WITH (FORCE)')
        import redis

        client = redis.Redis.from_url(supervisor_env["APP_SUPERVISOR_REDIS_URL"])
        for key in client.scan_iter(match=f"{tag}:*", count=1000):
            client.delete(key)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"total {time.monotonic() - started:.0f} s", file=sys.stderr)
