"""Convergence: how long an environment that comes back takes to reach what the registry wants,
and how long an added environment takes to run the app.

    .venv/bin/python bench/convergence_bench.py [--apps 100] [--patches 8] [--redis-db 10]

What it does: starts the test cluster's real processes (tests/support/cluster.py: a supervisor
gunicorn and two workers env_a/env_b, each gunicorn + ``run_worker``) and one start-queue worker,
and plays the supervisor in this process (actions on the cluster's registry database, the
workers' reports applied with ``ingest``). N apps run on both environments.

- **Environment back**: env_b is frozen (SIGSTOP of its agent and web server) until it is
  offline; all N apps are stopped on env_b; env_b is thawed. Timed: from SIGCONT until every
  one of its N placements is observed ``stopped`` and every request's audit entry is closed.
  Reference, in the same run: the same N stops sent while env_b is online (request → all
  observed). Then the same with starts (back to running), frozen and online.
- **PATCH → running**: an app running on env_a only gets env_b added
  (``set_application_environments``, as ``PATCH /api/v1/apps/<name>`` does): timed until it is
  observed ``running`` on env_b. Reference: the same app's start on env_b asked directly
  (``request_start`` for env_b). Interleaved, ``--patches`` times each; p50 of each.

Prints one JSON document per figure with its ratio to its reference. Everything it created is
removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=100)
    parser.add_argument("--patches", type=int, default=8)
    parser.add_argument("--redis-db", default="10", help="a Redis database number free for the bench")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    os.environ["TEST_REDIS_DB"] = args.redis_db

    from tests.support import services
    from tests.support.cluster import Cluster
    from tests.support.processes import PYTHON, Process

    services.claim_redis_db()
    log_dir = Path(tempfile.mkdtemp(prefix="convergence-bench-"))
    cluster = Cluster(log_dir)
    queue = None
    try:
        os.environ.update(cluster.supervisor_env)
        import django

        django.setup()
        cluster.start()
        queue = Process("rqworker", [PYTHON, "manage.py", "rqworker", "app_starts"], cluster.supervisor_env, log_dir)
        queue.start()
        from apps_registry.control import ingest, liveness
        from apps_registry.models import AppEnvironment, AuditEntry, Environment
        from apps_registry.registry import actions

        def until(condition, what: str) -> float:
            began = time.monotonic()
            while not condition():
                ingest.ingest()
                if time.monotonic() - began > args.timeout:
                    raise SystemExit(f"timed out: {what}")
                time.sleep(0.05)
            return time.monotonic()

        until(lambda: Environment.objects.filter(name__in=["env_a", "env_b"]).count() == 2, "registrations")
        env_a, env_b = (Environment.objects.get(name=name) for name in ("env_a", "env_b"))
        apps = [
            actions.create_application(name=f"cb_{i:03d}", environments=[env_a, env_b], options={"modules": []})
            for i in range(args.apps)
        ]
        on_b = AppEnvironment.objects.filter(application__name__startswith="cb_", environment=env_b)
        for app in apps:
            actions.request_start(app)
        until(lambda: on_b.filter(status="running").count() == args.apps, "first starts")

        def pending(request_ids: list[str]) -> bool:
            return AuditEntry.objects.filter(request_id__in=request_ids, result="pending").exists()

        worker = cluster.env_b
        results = []
        for verb, wanted in (("stop", "stopped"), ("start", "running")):
            ask = actions.request_stop if verb == "stop" else actions.request_start
            back = "start" if verb == "stop" else "stop"
            # Reference: env_b online.
            began = time.monotonic()
            ids = [ask(app, environments=["env_b"]) for app in apps]
            done = until(
                lambda wanted=wanted, ids=ids: on_b.filter(status=wanted).count() == args.apps and not pending(ids),
                f"{verb} online",
            )
            online_s = done - began
            reverse = actions.request_start if back == "start" else actions.request_stop
            for app in apps:
                reverse(app, environments=["env_b"])
            undone = "running" if back == "start" else "stopped"
            until(lambda undone=undone: on_b.filter(status=undone).count() == args.apps, f"{back} back")
            # Frozen until offline, asked meanwhile, then thawed.
            for process in (worker.agent, worker.web):
                process.signal(signal.SIGSTOP)
            # The environment must be offline, not just slow, before the requests go out.
            until(lambda: liveness.environment_statuses([env_b])["env_b"][0] == "offline", "env_b offline")
            ids = [ask(app, environments=["env_b"]) for app in apps]
            thawed = time.monotonic()
            for process in (worker.agent, worker.web):
                process.signal(signal.SIGCONT)
            done = until(
                lambda wanted=wanted, ids=ids: on_b.filter(status=wanted).count() == args.apps and not pending(ids),
                f"{verb} after thaw",
            )
            back_s = done - thawed
            outcomes = sorted(
                {o for row in AuditEntry.objects.filter(request_id__in=ids) for o in row.outcomes.values()}
            )
            results.append(
                {
                    "figure": f"environment back online: {args.apps} {verb}s converged",
                    "apps": args.apps,
                    "verb": verb,
                    "back_online_s": round(back_s, 2),
                    "reference_online_s": round(online_s, 2),
                    "ratio": round(back_s / online_s, 2),
                    "outcomes": outcomes,
                }
            )
            print(json.dumps(results[-1]), flush=True)

        # PATCH (add an environment) → running there, against a direct start there.
        subject = actions.create_application(name="cb_patch", environments=[env_a], options={"modules": []})
        actions.request_start(subject)
        placement = AppEnvironment.objects.filter(application=subject)
        until(lambda: placement.filter(status="running").count() == 1, "patch subject running")
        patch_s, start_s = [], []
        for _ in range(args.patches):
            subject.refresh_from_db()
            began = time.monotonic()
            actions.set_application_environments(subject, [env_a, env_b], via="bench")
            patch_s.append(until(lambda: placement.filter(status="running").count() == 2, "patch") - began)
            actions.request_stop(subject, environments=["env_b"])
            until(lambda: placement.filter(environment=env_b, status="stopped").exists(), "stop")
            began = time.monotonic()
            actions.request_start(subject, environments=["env_b"])
            start_s.append(until(lambda: placement.filter(status="running").count() == 2, "start") - began)
            actions.set_application_environments(subject, [env_a], via="bench", force=True)
            until(lambda: placement.count() == 1, "placement removed")
        patch, start = statistics.median(patch_s), statistics.median(start_s)
        print(
            json.dumps(
                {
                    "figure": "PATCH adds an environment → running there",
                    "patches": args.patches,
                    "patch_to_running_p50_ms": round(1000 * patch, 1),
                    "reference_start_there_p50_ms": round(1000 * start, 1),
                    "ratio": round(patch / start, 2),
                }
            ),
            flush=True,
        )
    finally:
        for process in (cluster.env_b.agent, cluster.env_b.web):
            process.signal(signal.SIGCONT)
        if queue is not None:
            queue.stop()
        cluster.stop()
        services.release_redis_db()
        services.drop_run_databases()


if __name__ == "__main__":
    main()
