"""API read throughput: ``GET /api/v1/apps`` with 1,000 apps registered.

    .venv/bin/python bench/api_bench.py [--apps 1000] [--clients 4] [--seconds 15] [--redis-db 12]

What it does: creates a PostgreSQL registry database, migrates it, registers two
environments and N apps placed on both (through ``actions.create_application``) and an API
token; starts a supervisor gunicorn (2 processes × 4 threads, ``--reuse-port``) on it; then
``--clients`` threads, each with its own keep-alive connection, request ``GET /api/v1/apps``
back to back for ``--seconds``. Prints requests/s, latency p50/p99 and the body size. The
client runs on the same 2 cores as the server, so the figure is a floor. Everything it
created is removed at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from stats import percentile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--redis-db", default="12", help="a Redis database number free for the bench")
    args = parser.parse_args()
    os.environ["TEST_REDIS_DB"] = args.redis_db

    from tests.support import services
    from tests.support.processes import free_port, gunicorn, http_ok, wait_until

    services.claim_redis_db()
    log_dir = Path(tempfile.mkdtemp(prefix="api-bench-"))
    env = {
        **services.supervisor_test_environ(),
        "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",
        "DB_DATABASE": f"{services.RUN_ID}_apibench",
    }
    web = None
    try:
        from registry_db import create_migrated

        create_migrated(env)
        os.environ.update(env)
        import django

        django.setup()
        from django.contrib.auth.models import User
        from django.db import connections

        from apps_registry.models import ApiToken
        from apps_registry.registry import actions

        envs = [
            actions.register_environment(name=name, url=f"http://127.0.0.1:{port}")
            for name, port in (("env_a", 15000), ("env_b", 16000))
        ]
        started = time.monotonic()
        for i in range(args.apps):
            actions.create_application(
                name=f"bench_{i:04d}", environments=envs, display_name=f"Bench app {i}", options={"modules": ["tasks"]}
            )
        setup_s = time.monotonic() - started
        _token, raw = ApiToken.issue(User.objects.create_superuser("bench", password="x"))
        connections.close_all()

        port = free_port()
        web = gunicorn("supervisor", port, env, log_dir, workers=2, threads=4).start()
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=30, interval=0.1)
        headers = {"Authorization": f"Bearer {raw}"}

        def one(conn: http.client.HTTPConnection) -> int:
            conn.request("GET", "/api/v1/apps", headers=headers)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"{response.status}: {body[:200]!r}")
            return len(body)

        warm = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        size = one(warm)
        count = len(json.loads(_get(warm, headers))["apps"])
        assert count == args.apps, count
        latencies: list[float] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + args.seconds

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            mine = []
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                one(conn)
                mine.append(time.perf_counter() - t0)
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - began
        print(
            json.dumps(
                {
                    "apps": args.apps,
                    "clients": args.clients,
                    "requests": len(latencies),
                    "requests_per_s": round(len(latencies) / elapsed, 1),
                    "p50_ms": round(percentile(latencies, 50) * 1000, 1),
                    "p99_ms": round(percentile(latencies, 99) * 1000, 1),
                    "body_kb": round(size / 1024, 1),
                    "setup_s": round(setup_s, 1),
                }
            )
        )
    finally:
        if web is not None:
            web.stop()
        services.release_redis_db()
        services.drop_run_databases()


def _get(conn: http.client.HTTPConnection, headers: dict) -> bytes:
    conn.request("GET", "/api/v1/apps", headers=headers)
    return conn.getresponse().read()


if __name__ == "__main__":
    main()
