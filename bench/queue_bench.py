"""Start queue throughput: N apps × 2 environments with 1 and with 4 queue workers.

    .venv/bin/python bench/queue_bench.py [--apps 100] [--workers 1,4] [--redis-db 11]

What it does: starts the test cluster's real processes (tests/support/cluster.py: a supervisor
gunicorn and two workers env_a/env_b, each gunicorn + ``run_worker``, PostgreSQL on loopback,
Redis database ``--redis-db``), plays the supervisor in this process (actions on the cluster's
registry database), and for each queue-worker count: starts that many
``manage.py rqworker app_starts`` processes, requests a start of N fresh apps placed on both
environments (first initialisation: CREATE DATABASE, migrations, first admin), and times from
the first request until every placement is ``running``. Each round uses its own apps, so both
do the same work. Prints wall times, starts per second and the ratio 4-worker / 1-worker
(target ≤ 0.5). Everything it created (databases, Redis keys) is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine so far, from /proc/stat."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=100)
    parser.add_argument("--workers", default="1,4", help="queue-worker counts to compare")
    parser.add_argument("--redis-db", default="11", help="a Redis database number free for the bench")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--alternate",
        action="store_true",
        help="diagnostic: each app on one environment, env_a and env_b in turn (spreads first starts)",
    )
    args = parser.parse_args()
    os.environ["TEST_REDIS_DB"] = args.redis_db

    from tests.support import services
    from tests.support.cluster import Cluster
    from tests.support.processes import PYTHON, Process

    services.claim_redis_db()
    log_dir = Path(tempfile.mkdtemp(prefix="queue-bench-"))
    cluster = Cluster(log_dir)
    results = []
    started_workers: list = []
    try:
        # This process plays the supervisor: the cluster's settings, set up before its start
        # (which waits for the agents' leases through our Redis client).
        os.environ.update(cluster.supervisor_env)
        import django

        django.setup()
        cluster.start()
        from apps_registry.control import ingest
        from apps_registry.models import AppEnvironment, Environment
        from apps_registry.registry import actions

        deadline = time.monotonic() + 60
        while Environment.objects.filter(name__in=["env_a", "env_b"]).count() < 2:
            ingest.ingest()
            if time.monotonic() > deadline:
                raise SystemExit("the workers did not register")
            time.sleep(0.2)
        envs = list(Environment.objects.filter(name__in=["env_a", "env_b"]))
        for count in [int(n) for n in args.workers.split(",")]:
            prefix = f"qb{count}_"
            apps = [
                actions.create_application(
                    name=f"{prefix}{i:03d}",
                    environments=[envs[i % 2]] if args.alternate else envs,
                    options={"modules": []},
                )
                for i in range(args.apps)
            ]
            total = args.apps if args.alternate else 2 * args.apps
            workers = [
                Process(
                    f"rqworker-{count}-{i}",
                    [PYTHON, "manage.py", "rqworker", "app_starts"],
                    cluster.supervisor_env,
                    log_dir,
                ).start()
                for i in range(count)
            ]
            started_workers += workers
            time.sleep(3)  # let them connect; the clock starts at the first request
            placements = AppEnvironment.objects.filter(application__name__startswith=prefix)
            started = time.monotonic()
            busy_before, total_before = cpu_times()
            for app in apps:
                actions.request_start(app)
            requested = time.monotonic() - started
            while True:
                ingest.ingest()  # as the admin's status endpoint does: apply the workers' reports
                done = placements.filter(status__in=["running", "error"]).count()
                if done == total:
                    break
                if time.monotonic() - started > args.timeout:
                    raise SystemExit(f"round with {count} worker(s) timed out ({done} of {total} done)")
                time.sleep(0.1)
            wall = time.monotonic() - started
            busy_after, total_after = cpu_times()
            busy = (busy_after - busy_before) / (total_after - total_before)
            cpu_seconds = (busy_after - busy_before) / os.sysconf("SC_CLK_TCK")
            errors = placements.filter(status="error").count()
            messages = sorted(set(placements.filter(status="error").values_list("error", flat=True)))[:5]
            if messages:
                print(json.dumps({"queue_workers": count, "error_messages": messages}), flush=True)
            for worker in workers:
                worker.stop()
            results.append(
                {
                    "queue_workers": count,
                    "apps": args.apps,
                    "starts": total,
                    "wall_s": round(wall, 1),
                    "requesting_s": round(requested, 2),
                    "starts_per_s": round(total / wall, 2),
                    "errors": errors,
                    # The whole machine during the round: how busy its cores were, and CPU
                    # time per start (every process: supervisor, agents, PostgreSQL, Redis).
                    "cpu_busy_pct": round(100 * busy),
                    "cpu_ms_per_start": round(1000 * cpu_seconds / total, 1),
                }
            )
            print(json.dumps(results[-1]), flush=True)
    finally:
        for worker in started_workers:
            worker.stop()
        cluster.stop()
        services.release_redis_db()
        services.drop_run_databases()
    if len(results) >= 2:
        ratio = results[-1]["wall_s"] / results[0]["wall_s"]
        print(
            json.dumps(
                {
                    "ratio": round(ratio, 3),
                    "compared": f"{results[-1]['queue_workers']} vs {results[0]['queue_workers']} workers",
                    "target": "<= 0.5",
                }
            )
        )


if __name__ == "__main__":
    main()
