"""The access proxy's cost: a hosted app's pages direct, through the supervisor, through nginx.

    .venv/bin/python bench/proxy_bench.py [--seconds 8] [--rounds 2] [--connections 8]

Set-up, all on loopback: PostgreSQL databases for a supervisor registry, a worker and one
hosted app ``crm`` (modules contacts + tasks, 25 contacts, a logged-in admin session); a
worker gunicorn and a supervisor gunicorn (2 processes x 4 threads each, ``--reuse-port``);
nginx (Debian package) as a reverse proxy to the same worker, config generated in a temp dir.

Load: ``wrk`` (Debian package) with a fixed number of connections (bounded load) against
  - the admin changelist of 25 contacts (logged in): a realistic page;
  - ``/apps/crm/`` (a tiny 302 from the app): the proxy's fixed cost shows most here.
A second supervisor runs with PROXY_ROUTE_CACHE_SECONDS=0 (the registry read on every
request) to show what the route cache saves. Each round measures every target in turn; the figures are the
medians over rounds. Prints a Markdown table and a JSON summary; removes what it created.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.processes import PYTHON, free_port, gunicorn, http_ok, wait_until  # noqa: E402

APP = "crm"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def pg_exec(sql: str, dbname: str = "postgres", params: tuple = ()) -> list:
    import psycopg

    with psycopg.connect(**PG, dbname=dbname, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def manage(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(
        [PYTHON, "manage.py", *args], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )
    if result.returncode:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


NGINX_CONF = """
worker_processes 2;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream worker {{ server 127.0.0.1:{worker_port}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            proxy_pass http://worker;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host:$server_port;
            proxy_set_header X-Forwarded-Host $host:$server_port;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants (gunicorn or nginx workers)."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def wrk(url: str, cookie: str, seconds: int, connections: int, meters: dict[str, int] | None = None) -> dict:
    before = {name: tree_cpu_seconds(pid) for name, pid in (meters or {}).items()}
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-H", f"Cookie: {cookie}", url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    cpu = {name: tree_cpu_seconds(pid) - before[name] for name, pid in (meters or {}).items()}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    p50_text = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    factor = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50_text.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": rps,
        "p50_ms": float(p50_text.group(1)) * factor,
        "bad": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(0) if errors else "",
        "cpu_ms_per_request": {name: 1000 * used / max(requests, 1) for name, used in cpu.items()},
    }


def fetch(url: str, cookie: str) -> tuple[int, bytes]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, headers={"Cookie": cookie})
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


REDIS_URL = "redis://127.0.0.1:6379/4"


def bench_environments(tag: str, tmp: Path, worker_port: int, redis_url: str) -> tuple[dict, dict]:
    """The worker's and the supervisor's environments of a bench cluster (also edge_bench's): one
    worker ``env_bench`` on ``worker_port``, leases that never lapse, databases prefixed ``tag``."""
    common = {
        "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",
        "SECRET_KEY": "bench-secret-key-not-for-production",
        "ALLOWED_HOSTS": "*",
        "DB_DIALECT": "postgres",
        "DB_HOST": PG["host"],
        "DB_PORT": str(PG["port"]),
        "DB_USER": PG["user"],
        "APP_SUPERVISOR_REDIS_URL": redis_url,
        "APP_REDIS_PREFIX": tag,
        "APP_DB_PREFIX": f"{tag}_",
        "LOG_LEVEL": "WARNING",
        "APP_LEASE_INTERVAL": "3600",
        "APP_OFFLINE_AFTER": "8000",
    }
    worker_env = {
        **common,
        "APP_MODE": "worker",
        "DB_DATABASE": f"{tag}_worker",
        "ENVIRONMENT_NAME": "env_bench",
        "ENVIRONMENT_URL": f"http://127.0.0.1:{worker_port}",
        "APP_STORAGE_DIR": str(tmp / "worker"),
    }
    supervisor_env = {
        **common,
        "APP_MODE": "supervisor",
        "DB_DATABASE": f"{tag}_supervisor",
        "APP_STORAGE_DIR": str(tmp / "supervisor"),
    }
    return worker_env, supervisor_env


def main() -> None:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is needed: apt-get install -y {tool}")

    tag = f"benchpx{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi", "worker", "supervisor"):
        (tmp / sub).mkdir()
    worker_port, supervisor_port, nginx_port, uncached_port = free_port(), free_port(), free_port(), free_port()
    worker_env, supervisor_env = bench_environments(tag, tmp, worker_port, os.environ.get("BENCH_REDIS_URL", REDIS_URL))
    supervisor_env["PROXY_POOL_SIZE"] = "8"
    processes = []
    nginx: subprocess.Popen | None = None
    try:
        for env in (worker_env, supervisor_env):
            pg_exec(f'CREATE DATABASE "{env["DB_DATABASE"]}"')
            manage(["migrate", "--no-input", "-v", "0"], env)
        manage(
            ["host_app", APP, "--modules", "contacts,tasks", "--admin-user", "bench", "--admin-password", "pw"],
            worker_env,
        )
        for i in range(25):
            pg_exec(
                "INSERT INTO contacts_contact (name, email, phone, company, notes, attachment, created_at, updated_at)"
                " VALUES (%s, %s, '', %s, '', '', now(), now())",
                f"{tag}_{APP}",
                (f"Contact {i:02d}", f"c{i}@example.org", f"Company {i % 5}"),
            )
        # The registry: the worker's environment and the app, running there.
        manage(
            [
                "shell",
                "-c",
                "from apps_registry.registry import actions;"
                f"env = actions.register_environment(name='env_bench', url='http://127.0.0.1:{worker_port}');"
                f"actions.create_application(name='{APP}', environments=[env], via='bench');"
                f"actions.record_app_status('{APP}', 'env_bench', 'running')",
            ],
            supervisor_env,
        )
        worker = gunicorn("worker", worker_port, worker_env, tmp, workers=2, threads=4)
        supervisor = gunicorn("supervisor", supervisor_port, supervisor_env, tmp, workers=2, threads=4)
        uncached_env = {**supervisor_env, "PROXY_ROUTE_CACHE_SECONDS": "0"}
        uncached = gunicorn("supervisor-nocache", uncached_port, uncached_env, tmp, workers=2, threads=4)
        for process in (worker, supervisor, uncached):
            process.args = [a for a in process.args if a not in ("--access-logfile", "-")]
            processes.append(process.start())
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, worker_port=worker_port, port=nginx_port))
        nginx = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for port in (worker_port, supervisor_port, nginx_port, uncached_port):
            wait_until(lambda port=port: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=60, message=str(port))

        # Log in once, directly; the session cookie is the app's, valid through every path.
        cookie = login(worker_port)
        targets = {
            "direct": worker_port,
            "supervisor": supervisor_port,
            "supervisor, no route cache": uncached_port,
            "nginx": nginx_port,
        }
        pages = {"changelist": f"/apps/{APP}/admin/contacts/contact/", "tiny": f"/apps/{APP}/"}
        for name, port in targets.items():
            status, body = fetch(f"http://127.0.0.1:{port}{pages['changelist']}", cookie)
            assert status == 200 and body.count(b"Contact ") >= 25, (name, status)
            print(f"{name}: changelist {len(body)} bytes", file=sys.stderr)
            assert fetch(f"http://127.0.0.1:{port}{pages['tiny']}", cookie)[0] == 302, name
        for port in targets.values():  # warm every process and pool
            wrk(f"http://127.0.0.1:{port}{pages['changelist']}", cookie, 2, args.connections)

        # Whose CPU each target costs: the worker always, plus the proxy in front of it.
        meters = {
            "direct": {"worker": worker.pid},
            "supervisor": {"worker": worker.pid, "proxy": supervisor.pid},
            "supervisor, no route cache": {"worker": worker.pid, "proxy": uncached.pid},
            "nginx": {"worker": worker.pid, "proxy": nginx.pid},
        }
        results: dict[str, dict[str, list[dict]]] = {p: {t: [] for t in targets} for p in pages}
        for _ in range(args.rounds):
            for page, path in pages.items():
                for name, port in targets.items():
                    url = f"http://127.0.0.1:{port}{path}"
                    results[page][name].append(wrk(url, cookie, args.seconds, args.connections, meters[name]))
        report(results, args)
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(timeout=10)
        for process in processes:
            process.stop()
        for db in pg_exec("SELECT datname FROM pg_database WHERE datname LIKE %s", params=(f"{tag}\\_%",)):
            pg_exec(f'DROP DATABASE IF EXISTS "{db[0]}" WITH (FORCE)')
        import redis

        client = redis.Redis.from_url(supervisor_env["APP_SUPERVISOR_REDIS_URL"])
        for key in client.scan_iter(match=f"{tag}:*", count=1000):
            client.delete(key)
        shutil.rmtree(tmp, ignore_errors=True)


def login(port: int, app: str = APP) -> str:
    """The session cookie of ``app``'s admin user ``bench`` (shared with bench/edge_bench.py)."""
    import http.client
    from http.cookies import SimpleCookie

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", f"/apps/{app}/admin/login/")
    response = conn.getresponse()
    html = response.read().decode()
    cookies = {k: m.value for h in response.headers.get_all("Set-Cookie") or [] for k, m in SimpleCookie(h).items()}
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
    body = f"csrfmiddlewaretoken={token}&username=bench&password=pw&next=/apps/{app}/admin/"
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
    }
    conn.request("POST", f"/apps/{app}/admin/login/", body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    assert response.status == 302, response.status
    for header in response.headers.get_all("Set-Cookie") or []:
        cookies.update({k: m.value for k, m in SimpleCookie(header).items()})
    conn.close()
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


def report(results: dict, args: argparse.Namespace) -> None:
    """Throughput and p50 (medians over rounds), and CPU per request: on a shared machine the
    CPU figures are the steadier ones, and worker / (worker + proxy), both measured in the same
    run, is the throughput ratio to expect when the cores are the bottleneck."""
    summary: dict = {"connections": args.connections, "seconds": args.seconds, "rounds": args.rounds}
    lines = [
        "| page | target | req/s | p50 ms | req/s ratio | worker CPU ms/req | proxy CPU ms/req | CPU-bound ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for page, by_target in results.items():
        direct_rps = statistics.median(r["rps"] for r in by_target["direct"])
        for target, runs in by_target.items():
            rps = statistics.median(r["rps"] for r in runs)
            p50 = statistics.median(r["p50_ms"] for r in runs)
            worker_cpu = statistics.median(r["cpu_ms_per_request"]["worker"] for r in runs)
            proxy_cpu = statistics.median(r["cpu_ms_per_request"].get("proxy", 0.0) for r in runs)
            bad = sum(r["bad"] for r in runs)
            summary[f"{page}.{target}"] = {
                "rps": round(rps, 1),
                "p50_ms": round(p50, 2),
                "worker_cpu_ms": round(worker_cpu, 2),
                "proxy_cpu_ms": round(proxy_cpu, 2),
                "bad": bad,
                "runs": runs,
            }
            cpu_ratio = worker_cpu / (worker_cpu + proxy_cpu)
            lines.append(
                f"| {page} | {target} | {rps:.0f} | {p50:.1f} | {rps / direct_rps:.2f} | {worker_cpu:.2f} "
                f"| {proxy_cpu:.2f} | {cpu_ratio:.2f} |"
            )
    print("\n".join(lines))
    print(f"load average at the end: {os.getloadavg()}")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"total {time.monotonic() - started:.0f} s", file=sys.stderr)
