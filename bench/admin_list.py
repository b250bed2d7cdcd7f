"""The admin's Applications list at 10,000 apps × 3 environments: page time and query count.

    .venv/bin/python bench/admin_list.py [--apps 10000] [--environments 3] [--requests 20] [--redis-db 14]

What it does: creates a PostgreSQL registry database and migrates it; registers the
environments through ``actions.register_environment``; bulk-inserts N applications placed on
every environment, with statuses spread over stopped / running / queued / error (a bulk
insert of seed data: creating 10,000 apps one by one through the actions would take longer
than the measurement); starts a supervisor gunicorn (2 processes × 4 threads) on it; logs in
as a superuser and requests, back to back, the first page of the Applications list, a later
page, a status-filtered page, a search, the Environments list and the live status endpoint
for a page of rows. Prints p50/p99 per page (over ``--requests``) and the number of SQL
queries each page makes (counted in-process with Django's test client on the same database:
it must not grow with the number of apps). Everything it created is removed at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from stats import percentile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
STATUSES = ("stopped", "running", "running", "running", "queued", "error")


def seed(apps: int, environments: int) -> list[int]:
    from django.utils import timezone

    from apps_registry.models import AppEnvironment, Application
    from apps_registry.registry import actions

    envs = [
        actions.register_environment(name=f"env_{chr(ord('a') + i)}", url=f"http://127.0.0.1:{15000 + i}")
        for i in range(environments)
    ]
    now = timezone.now()
    batch = 2000
    for start in range(0, apps, batch):
        created = Application.objects.bulk_create(
            Application(name=f"app_{i:05d}", display_name=f"Application {i}", options={"modules": ["contacts"]})
            for i in range(start, min(apps, start + batch))
        )
        AppEnvironment.objects.bulk_create(
            AppEnvironment(
                application=app,
                environment=env,
                status=STATUSES[(app.pk + j) % len(STATUSES)],
                error="boom" if STATUSES[(app.pk + j) % len(STATUSES)] == "error" else "",
                status_changed_at=now,
            )
            for app in created
            for j, env in enumerate(envs)
        )
    return list(Application.objects.order_by("name").values_list("pk", flat=True)[:100])


def login(port: int, username: str, password: str) -> str:
    """Log in through the real login form; return the Cookie header for the session."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/admin/login/")
    response = conn.getresponse()
    page = response.read().decode()
    cookies = {}
    for header in response.headers.get_all("Set-Cookie") or []:
        name, value = header.split(";", 1)[0].split("=", 1)
        cookies[name] = value
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    body = f"username={username}&password={password}&csrfmiddlewaretoken={token}&next=/admin/"
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
        "Referer": f"http://127.0.0.1:{port}/admin/login/",
    }
    conn.request("POST", "/admin/login/", body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    for header in response.headers.get_all("Set-Cookie") or []:
        name, value = header.split(";", 1)[0].split("=", 1)
        cookies[name] = value
    if response.status != 302:
        raise SystemExit(f"login failed: {response.status}")
    conn.close()
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=10_000)
    parser.add_argument("--environments", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--redis-db", default="10", help="a Redis database number free for the bench")
    args = parser.parse_args()
    os.environ["TEST_REDIS_DB"] = args.redis_db

    from tests.support import services
    from tests.support.processes import free_port, gunicorn, http_ok, wait_until

    services.claim_redis_db()
    log_dir = Path(tempfile.mkdtemp(prefix="admin-list-bench-"))
    env = {
        **services.supervisor_test_environ(),
        "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",
        "DB_DATABASE": f"{services.RUN_ID}_adminbench",
    }
    web = None
    try:
        from registry_db import create_migrated

        create_migrated(env)
        os.environ.update(env)
        import django

        django.setup()
        from django.contrib.auth.models import User
        from django.db import connection, connections
        from django.test import Client
        from django.test.utils import CaptureQueriesContext

        started = time.monotonic()
        first_pks = seed(args.apps, args.environments)
        seed_s = time.monotonic() - started
        User.objects.create_superuser("bench", password="bench-pass")
        status_url = "/admin/app-supervisor/status.json?apps=" + ",".join(str(pk) for pk in first_pks[:50])
        middle = max(1, args.apps // 50 // 2)  # 50 rows per page
        pages = {
            "applications, first page": "/admin/apps_registry/application/",
            f"applications, page {middle}": f"/admin/apps_registry/application/?p={middle}",
            "applications, filtered by status": "/admin/apps_registry/application/?status=error",
            "applications, search": "/admin/apps_registry/application/?q=app_0999",
            "environments": "/admin/apps_registry/environment/",
            "live status endpoint (50 rows)": status_url,
        }
        # Query counts, in-process on the same database (the count does not depend on the server).
        client = Client()
        client.force_login(User.objects.get(username="bench"))
        queries = {}
        for label, url in pages.items():
            client.get(url)  # warm caches (content types, permissions)
            with CaptureQueriesContext(connection) as captured:
                response = client.get(url)
            if response.status_code != 200:
                raise SystemExit(f"{url}: {response.status_code}")
            queries[label] = len(captured.captured_queries)
        queries = {label.replace(f"page {middle}", "a middle page"): n for label, n in queries.items()}
        pages = {label.replace(f"page {middle}", "a middle page"): url for label, url in pages.items()}
        connections.close_all()

        port = free_port()
        web = gunicorn("supervisor", port, env, log_dir, workers=2, threads=4).start()
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=30, interval=0.1)
        cookie = login(port, "bench", "bench-pass")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        results = []
        for label, url in pages.items():
            times, size = [], 0
            for _ in range(args.requests + 2):
                t0 = time.perf_counter()
                conn.request("GET", url, headers={"Cookie": cookie})
                response = conn.getresponse()
                body = response.read()
                times.append(time.perf_counter() - t0)
                if response.status != 200:
                    raise SystemExit(f"{url}: {response.status} {body[:300]!r}")
                size = len(body)
            times = times[2:]  # the first requests of each page warm the server's caches
            results.append(
                {
                    "page": label,
                    "url": url if len(url) < 80 else url[:77] + "...",
                    "p50_ms": round(percentile(times, 50) * 1000, 1),
                    "p99_ms": round(percentile(times, 99) * 1000, 1),
                    "queries": queries[label],
                    "kb": round(size / 1024, 1),
                }
            )
        conn.close()
        print(
            json.dumps(
                {
                    "apps": args.apps,
                    "environments": args.environments,
                    "seed_s": round(seed_s, 1),
                    "requests_per_page": args.requests,
                    "pages": results,
                },
                indent=1,
            )
        )
    finally:
        if web is not None:
            web.stop()
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: S110 (Django may not be set up yet)
            pass
        services.release_redis_db()
        services.drop_run_databases()


if __name__ == "__main__":
    main()
