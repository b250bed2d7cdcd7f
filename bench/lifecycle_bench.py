"""Moves and drains: one app's move time and its longest request during the switch, a drain of
N apps, and a plain stop + start of the same app as the same-run reference.

    .venv/bin/python bench/lifecycle_bench.py [--moves 5] [--apps 100] [--redis-db 13]

What it does: starts the test cluster's real processes (tests/support/cluster.py: a supervisor
gunicorn and two workers env_a/env_b, each gunicorn + ``run_worker``, PostgreSQL on loopback,
Redis database ``--redis-db``) and two ``manage.py rqworker app_starts`` queue workers
(``APP_MOVE_DRAIN_SECONDS=1``), and plays the operator in this process (the registry's
actions and ``control.lifecycle.requests`` on the cluster's database). A client thread sends
20 GETs/s of the app's login page through the supervisor's proxy throughout.

1. reference: the running app is stopped and started again (on env_a, through the queue):
   wall time until it is running, and how many of the client's requests failed meanwhile;
2. ``--moves`` moves of the same app, env_a → env_b → env_a …: each move's wall time (request
   to job succeeded; p50 and max), the client's longest request while the moves ran, and its
   failed requests (target 0);
3. a drain of env_a holding ``--apps`` running apps (started first, not timed): wall time until
   the drain job succeeded, apps per second (``APP_DRAIN_CONCURRENCY`` = 4).

Prints one JSON document per figure; the ratio move p50 / reference is the same-run comparison
(a move also waits for the proxies' route cache and the drain time before it unloads the
source, so it is not expected to be faster — its point is 0 failed requests). Everything it
created (databases, Redis keys) is removed at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class Client:
    """20 GETs/s through the proxy: (status, seconds) of each, until stopped."""

    def __init__(self, base: str, path: str):
        self.base, self.path = urllib.parse.urlsplit(base), path
        self.results: list[tuple[float, int, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                conn = http.client.HTTPConnection(self.base.hostname, self.base.port, timeout=30)
                conn.request("GET", self.path)
                response = conn.getresponse()
                response.read()
                conn.close()
                status = response.status
            except OSError:
                status = 0
            took = time.monotonic() - started
            self.results.append((started, status, took))
            self.stop.wait(max(0.0, 0.05 - took))

    def window(self, since: float, until: float) -> tuple[int, int, float]:
        """(requests, failed, longest seconds) of the requests begun in [since, until]."""
        rows = [r for r in self.results if since <= r[0] <= until]
        return len(rows), sum(1 for r in rows if r[1] != 200), max((r[2] for r in rows), default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=5)
    parser.add_argument("--apps", type=int, default=100, help="apps on the drained environment")
    parser.add_argument("--redis-db", default="13", help="a Redis database number free for the bench")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    os.environ["TEST_REDIS_DB"] = args.redis_db

    from tests.support import services
    from tests.support.cluster import Cluster
    from tests.support.processes import PYTHON, Process

    services.claim_redis_db()
    log_dir = Path(tempfile.mkdtemp(prefix="lifecycle-bench-"))
    cluster = Cluster(log_dir)
    queue_workers: list = []
    client = None
    try:
        os.environ.update(cluster.supervisor_env)
        import django

        django.setup()
        cluster.start()
        from apps_registry.control import ingest
        from apps_registry.control.lifecycle import requests as lifecycle
        from apps_registry.models import AppEnvironment, Application, Environment, Job
        from apps_registry.registry import actions

        def wait(predicate, what: str, timeout: float = args.timeout):
            deadline = time.monotonic() + timeout
            while not (value := predicate()):
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out waiting for {what}")
                time.sleep(0.05)
            return value

        def statuses(name: str) -> dict:
            ingest.ingest()
            rows = AppEnvironment.objects.filter(application__name=name)
            return dict(rows.values_list("environment__name", "status"))

        def finished(job_id) -> Job | None:
            job = Job.objects.get(pk=job_id)
            return job if job.done else None

        wait(
            lambda: ingest.ingest() >= 0 and Environment.objects.filter(name__in=["env_a", "env_b"]).count() == 2,
            "the workers' registration",
            60,
        )
        env_a, _env_b = Environment.objects.get(name="env_a"), Environment.objects.get(name="env_b")
        env = {**cluster.supervisor_env, "APP_MOVE_DRAIN_SECONDS": "1"}
        for i in range(2):
            queue_workers.append(
                Process(f"rqworker-{i}", [PYTHON, "manage.py", "rqworker", "app_starts"], env, log_dir).start()
            )
        app = actions.create_application(name="lb_move", environments=[env_a], options={"modules": []})
        actions.request_start(app)
        wait(lambda: statuses("lb_move") == {"env_a": "running"}, "lb_move running", 120)
        client = Client(cluster.url, "/apps/lb_move/admin/login/")
        client.thread.start()
        wait(lambda: len(client.results) > 10 and client.results[-1][1] == 200, "the client served", 30)

        # 1. Reference: stop + start of the same app, same place.
        started = time.monotonic()
        actions.request_stop(Application.objects.get(name="lb_move"))
        wait(lambda: statuses("lb_move") == {"env_a": "stopped"}, "lb_move stopped", 60)
        actions.request_start(Application.objects.get(name="lb_move"))
        wait(lambda: statuses("lb_move") == {"env_a": "running"}, "lb_move running again", 120)
        reference = time.monotonic() - started
        wait(lambda: client.results[-1][1] == 200, "served again", 30)
        requests, failed, longest = client.window(started, time.monotonic())
        print(
            json.dumps(
                {
                    "figure": "reference: stop + start",
                    "wall_s": round(reference, 2),
                    "requests": requests,
                    "failed_requests": failed,
                }
            ),
            flush=True,
        )

        # 2. Moves back and forth under the client's load.
        times = []
        moves_started = time.monotonic()
        for i in range(args.moves):
            to = ["env_b"] if i % 2 == 0 else ["env_a"]
            started = time.monotonic()
            job = lifecycle.request_move(Application.objects.get(name="lb_move"), to)
            done = wait(lambda j=job.pk: finished(j), f"move {i}", 120)
            if done.status != "succeeded":
                raise SystemExit(f"move {i} ended {done.status}: {done.error}")
            times.append(time.monotonic() - started)
        requests, failed, longest = client.window(moves_started, time.monotonic())
        p50 = statistics.median(times)
        print(
            json.dumps(
                {
                    "figure": "move",
                    "moves": args.moves,
                    "p50_s": round(p50, 2),
                    "max_s": round(max(times), 2),
                    "requests": requests,
                    "failed_requests": failed,
                    "longest_request_ms": round(1000 * longest, 1),
                    "drain_wait_s": 1 + 1.0,
                }
            ),
            flush=True,
        )
        print(json.dumps({"ratio": round(p50 / reference, 2), "compared": "move p50 / stop+start"}), flush=True)
        client.stop.set()

        # 3. Drain env_a holding N running apps.
        apps = [
            actions.create_application(name=f"lb_d{i:03d}", environments=[env_a], options={"modules": []})
            for i in range(args.apps)
        ]
        for each in apps:
            actions.request_start(each)
        rows = AppEnvironment.objects.filter(application__name__startswith="lb_d")
        wait(lambda: ingest.ingest() >= 0 and rows.filter(status="running").count() == args.apps, "drain apps up")
        started = time.monotonic()
        job = lifecycle.request_drain(Environment.objects.get(name="env_a"))
        done = wait(lambda: finished(job.pk), "the drain")
        drain = time.monotonic() - started
        left = AppEnvironment.objects.filter(environment__name="env_a").count()
        print(
            json.dumps(
                {
                    "figure": "drain",
                    "apps": args.apps,
                    "status": done.status,
                    "wall_s": round(drain, 1),
                    "apps_per_s": round(args.apps / drain, 2),
                    "left_on_env_a": left,
                    "concurrency": 4,
                }
            ),
            flush=True,
        )
    finally:
        if client is not None:
            client.stop.set()
        for worker in queue_workers:
            worker.stop()
        cluster.stop()
        services.release_redis_db()
        services.drop_run_databases()


if __name__ == "__main__":
    main()
