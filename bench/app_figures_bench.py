"""What per-app figures cost a hosted request, against the per-app log line recorded beside it.

    .venv/bin/python bench/app_figures_bench.py [--requests 100000]

What it does: starts a private redis-server and, in this process configured as a worker
(APP_MODE=worker), records ``--requests`` requests in rounds of 1,500 (one app per round; below both queues'
bounds, so none is dropped), timing

  1. ``app_figures.record`` — what the hosting middleware adds per request for the figures —
     against ``app_logs.record`` (the per-app log line, the reference: the same design, already
     on every request), as µs per call on the request thread;
  2. each writer's drain: from the first record of a round until Redis holds the whole round
     (the minute hash's ``requests`` / the stream's length), as requests per second.

Both writers run at once, as in a worker. Prints one JSON summary with the ratios
(figures / log line). Everything runs on loopback; on a shared machine the absolute figures
move, the ratios less.
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

ROUND = 1500  # below both queues' bounds (app_logs: 2,000), so that nothing is dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    args = parser.parse_args()

    from tests.faults.harness import PrivateRedis
    from tests.support import services
    from tests.support.processes import wait_until

    log_dir = Path(tempfile.mkdtemp(prefix="figures-bench-"))
    private = PrivateRedis(log_dir)
    private.start()
    try:
        os.environ.update(
            {
                **services.supervisor_test_environ(),
                "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",
                "APP_MODE": "worker",
                "APP_PROCESS_ADAPTER": "local",
                "APP_DISCOVERY_ADAPTER": "remote",
                "ENVIRONMENT_NAME": "env_bench",
                "ENVIRONMENT_URL": "http://127.0.0.1:9",
                "APP_SUPERVISOR_REDIS_URL": private.url,
                "APP_COMMAND_REDIS_URL": private.url,
                "APP_REDIS_PREFIX": "figbench",
                "APP_LOG_LINES": "100000",
            }
        )
        os.environ.pop("SUPERVISOR_KEY", None)
        import django

        django.setup()
        from apps_registry.control import keys, redis_client
        from worker_agent.hosting import app_figures, app_logs

        client = redis_client.commands()
        rounds = max(1, args.requests // ROUND)
        figures_us = logs_us = 0.0
        figures_drain = logs_drain = 0.0
        for n in range(rounds):
            app = f"bench{n}"  # one app per round: each round's totals are its own
            started = time.perf_counter()
            for i in range(ROUND):
                app_figures.record(app, 500 if i % 20 == 0 else 200, 3.0 + i % 50)
            figures_us += time.perf_counter() - started
            wait_until(
                lambda app=app: sum(
                    int(client.hget(k, "requests") or 0) for k in client.scan_iter(redis_client.key("fig", app, "*"))
                )
                >= ROUND,
                timeout=60,
                interval=0.001,
                message="figures written",
            )
            figures_drain += time.perf_counter() - started

            started = time.perf_counter()
            for i in range(ROUND):
                app_logs.record(app, "info", f"GET /apps/{app}/admin/ 200 {3 + i % 50}ms")
            logs_us += time.perf_counter() - started
            stream = keys.app_log(app, "env_bench")
            wait_until(lambda stream=stream: client.xlen(stream) >= ROUND, timeout=60, interval=0.001)
            logs_drain += time.perf_counter() - started
        total = rounds * ROUND
        summary = {
            "requests": total,
            "figures_record_us": round(figures_us / total * 1e6, 2),
            "log_record_us": round(logs_us / total * 1e6, 2),
            "record_ratio": round(figures_us / logs_us, 2),
            "figures_drain_per_s": round(total / figures_drain),
            "log_drain_per_s": round(total / logs_drain),
            "drain_ratio": round((total / figures_drain) / (total / logs_drain), 2),
            "dropped": app_figures.dropped,
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
        print(json.dumps(summary))
    finally:
        private.process.stop()


if __name__ == "__main__":
    main()
