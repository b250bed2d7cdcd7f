"""One worker hosting many started apps: resident memory per app and a cold app's first request.

    .venv/bin/python bench/hosted_apps.py [--apps 200] [--threads 4] [--dialect sqlite|postgres]

What it does: starts N apps (SQLite, one file each, or one PostgreSQL database each on the
loopback server, user postgres; modules contacts + tasks) with the runtime
API in this process (as the agent would), then boots one gunicorn worker process
(APP_MODE=worker, 1 process x 4 threads) and
  1. measures its RSS with no app served yet (baseline),
  2. requests each app's login page once, in turn: the first request to a cold app (alias
     registration, admin site and URL table built, database opened, session written),
  3. requests them all again (warm), and measures RSS again.
Per-app memory = (RSS after - baseline) / N. Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stats import percentile  # noqa: E402

from tests.support.processes import free_port, gunicorn, wait_until  # noqa: E402


def get(port: int, path: str) -> tuple[int, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    return response.status, (time.perf_counter() - started) * 1000


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 1024 / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--apps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=4, help="parallel starts while initialising")
    parser.add_argument("--dialect", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()

    storage = Path(tempfile.mkdtemp(prefix="bench-hosted-"))
    port = free_port()
    env = {
        "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",
        "APP_MODE": "worker",
        "SECRET_KEY": "bench-secret-key-not-for-production",
        "ALLOWED_HOSTS": "*",
        "DB_DIALECT": args.dialect,
        "APP_STORAGE_DIR": str(storage),
        "APP_SUPERVISOR_REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2"),
        "APP_REDIS_PREFIX": f"bench{os.getpid()}",
        "ENVIRONMENT_NAME": "bench",
        "ENVIRONMENT_URL": f"http://127.0.0.1:{port}",
        "LOG_LEVEL": "WARNING",
    }
    prefix = f"bench{os.getpid()}_"
    if args.dialect == "postgres":
        env.update(DB_HOST="127.0.0.1", DB_USER="postgres", DB_DATABASE=f"{prefix}worker", APP_DB_PREFIX=prefix)
        with pg_admin() as conn:
            conn.execute(f'CREATE DATABASE "{prefix}worker"')
    os.environ.update(env)
    try:
        run(args, env, port, storage)
    finally:
        if args.dialect == "postgres":
            with pg_admin() as conn:
                for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",)):
                    conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        import shutil

        shutil.rmtree(storage, ignore_errors=True)


def pg_admin():
    import psycopg

    return psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True)


def run(args: argparse.Namespace, env: dict[str, str], port: int, storage: Path) -> None:
    import django

    django.setup()
    from django.contrib.auth.hashers import make_password

    from worker_agent.hosting import runtime

    names = [f"bench{i:04d}" for i in range(args.apps)]
    admin = {"username": "admin", "password_hash": make_password("bench")}
    started = time.perf_counter()
    with ThreadPoolExecutor(args.threads) as pool:
        for name in names:
            spec = {"name": name, "options": {"modules": ["contacts", "tasks"], "initial_admin": admin}}
            pool.submit(runtime.start_app, spec).add_done_callback(lambda f: f.result())
    init_seconds = time.perf_counter() - started
    assert len(runtime.running_apps()) == args.apps

    web = gunicorn("bench_worker", port, {**env, "WEB_CONCURRENCY": "1"}, storage, workers=1, threads=4).start()
    try:
        wait_until(lambda: get(port, "/healthz")[0] == 200, timeout=30, message="gunicorn up")
        import psutil

        child = wait_until(lambda: psutil.Process(web.pid).children(), timeout=10)[0].pid
        for _ in range(20):  # warm Django itself (not any app) before the baseline
            get(port, "/healthz")
        baseline = rss_mb(child)
        cold = []
        for name in names:
            status, ms = get(port, f"/apps/{name}/admin/login/")
            assert status == 200, (name, status)
            cold.append(ms)
        warm = []
        for name in names:
            status, ms = get(port, f"/apps/{name}/admin/login/")
            warm.append(ms)
        after = rss_mb(child)
    finally:
        web.stop()
    summary = {
        "apps": args.apps,
        "database": "sqlite (one file per app)" if args.dialect == "sqlite" else "postgresql (one database per app)",
        "initialise_all_s": round(init_seconds, 1),
        "initialise_per_app_ms": round(init_seconds / args.apps * 1000, 1),
        "rss_baseline_mb": round(baseline, 1),
        "rss_after_mb": round(after, 1),
        "rss_per_app_mb": round((after - baseline) / args.apps, 2),
        "cold_first_request_ms": {
            "very_first_app": round(cold[0], 1),
            "p50": round(statistics.median(cold), 1),
            "p99_without_first": round(percentile(cold[1:], 99), 1),
            "p99": round(percentile(cold, 99), 1),
            "max": round(max(cold), 1),
        },
        "warm_request_ms": {"p50": round(statistics.median(warm), 1), "p99": round(percentile(warm, 99), 1)},
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
