"""Command round trip on loopback: the supervisor issues stop, the status is visible.

    .venv/bin/python bench/command_roundtrip.py [--commands 200]

What it does: starts a private redis-server on a free port and one worker agent
(``manage.py run_worker``, APP_MODE=worker), and plays the supervisor in this process (its
own registry database — PostgreSQL by default, ``--registry sqlite`` for a file — migrated
here, one app placed on the worker). Then, N times:

  (a) channel: ``send_command(stop)`` → the agent reads it (blocking XREADGROUP), writes the
      statuses ``stopping``/``stopped`` and the acknowledgement → ``wait_for_ack`` returns.
      The status is written before the acknowledgement, so it is visible by then.
  (b) full path: ``actions.request_stop`` (registry transaction, generation bump, audit, cache
      publish, command after commit) → the worker's ``stopped`` status applied to the registry
      by ``ingest.ingest()``, run each time a new event arrives (blocking XREAD on the events
      stream) — what an operator's page shows.

The app is not running on the worker, so the app's own stop work is excluded, as the target
asks. Prints p50/p99 per variant and the ratio to the target (p50 ≤ 20 ms, p99 ≤ 100 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stats import percentile  # noqa: E402

from tests.support.processes import PYTHON, Process, free_port, wait_until  # noqa: E402

TARGET_P50_MS = 20.0
TARGET_P99_MS = 100.0
ENV = "bench_env"
APP = "bench_app"


def summary(name: str, samples: list[float]) -> dict:
    p50, p99 = percentile(samples, 50), percentile(samples, 99)
    return {
        "variant": name,
        "commands": len(samples),
        "p50_ms": round(p50, 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(max(samples), 2),
        "p50_vs_target": round(p50 / TARGET_P50_MS, 3),
        "p99_vs_target": round(p99 / TARGET_P99_MS, 3),
    }


def _pg_settings() -> dict[str, str]:
    return {
        "DB_HOST": os.environ.get("DB_HOST", "127.0.0.1"),
        "DB_PORT": os.environ.get("DB_PORT", "5432"),
        "DB_USER": os.environ.get("DB_USER", "postgres"),
    }


def _pg_admin(sql: str) -> None:
    import psycopg

    pg = _pg_settings()
    with psycopg.connect(
        host=pg["DB_HOST"], port=int(pg["DB_PORT"]), user=pg["DB_USER"], dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(sql)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument(
        "--registry", choices=("postgres", "sqlite"), default="postgres", help="the supervisor's registry database"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-roundtrip-"))
    redis_port = free_port()
    redis_server = subprocess.Popen(
        [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(work),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    common = {
        "SECRET_KEY": "bench-secret-key",
        "APP_SUPERVISOR_REDIS_URL": redis_url,
        "APP_COMMAND_REDIS_URL": redis_url,
        "APP_REDIS_PREFIX": "bench",
        "DB_DIALECT": "sqlite",
        "LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",
    }
    supervisor_env = {
        **common,
        "APP_MODE": "supervisor",
        "APP_STORAGE_DIR": str(work / "supervisor"),
    }
    pg_name = f"bench_roundtrip_{os.getpid()}"
    if args.registry == "postgres":
        supervisor_env.update({"DB_DIALECT": "postgres", "DB_DATABASE": pg_name, **_pg_settings()})
        _pg_admin(f'CREATE DATABASE "{pg_name}"')
    worker_env = {
        **common,
        "APP_MODE": "worker",
        "ENVIRONMENT_NAME": ENV,
        "ENVIRONMENT_URL": "http://127.0.0.1:9",
        "APP_STORAGE_DIR": str(work / "worker"),
    }
    os.environ.update(supervisor_env)
    agent = None
    try:
        import django

        django.setup()
        from django.core.management import call_command

        from apps_registry.control import channel, ingest, keys, redis_client
        from apps_registry.control.discovery import get_discovery
        from apps_registry.models import AppEnvironment
        from apps_registry.registry import actions

        wait_until(lambda: redis_client.commands().ping(), timeout=10, message="redis-server")
        call_command("migrate", verbosity=0)
        get_discovery().rebuild()
        env = actions.register_environment(name=ENV, url="http://127.0.0.1:9")
        app = actions.create_application(name=APP, environments=[env], options={"modules": ["contacts"]})

        agent = Process("agent", [PYTHON, "manage.py", "run_worker"], worker_env, work).start()
        wait_until(
            lambda: redis_client.commands().keys(keys.lease(ENV, "*")),
            timeout=30,
            message="agent lease",
        )
        ingest.ingest()

        round_trips: list[float] = []
        for i in range(args.commands):
            started = time.perf_counter()
            command_id = channel.send_command(ENV, "stop", APP, generation=10_000 + i, request_id=f"b{i}")
            ack = channel.wait_for_ack(command_id, 10)
            round_trips.append((time.perf_counter() - started) * 1000)
            if not ack or ack["result"] != "ok":
                raise SystemExit(f"unexpected acknowledgement: {ack}")
        ingest.ingest(limit=100_000)

        placement = AppEnvironment.objects.filter(application=app, environment=env)
        client = redis_client.commands()
        stream = keys.events_stream()
        full: list[float] = []
        issuing: list[float] = []
        for _ in range(args.commands):
            actions.record_app_status(APP, ENV, "running")  # as if it ran: request_stop moves it to stopping
            app.refresh_from_db()
            newest = client.xrevrange(stream, count=1)
            last_id = newest[0][0] if newest else "0-0"
            started = time.perf_counter()
            actions.request_stop(app)
            issuing.append((time.perf_counter() - started) * 1000)
            deadline = started + 10
            # Wake on each new event (a blocking XREAD, no polling), apply, look.
            while True:
                for _name, entries in client.xread({stream: last_id}, block=1000) or []:
                    last_id = entries[-1][0]
                ingest.ingest()
                if placement.values_list("status", flat=True).first() == "stopped":
                    break
                if time.perf_counter() > deadline:
                    raise SystemExit("status not visible within 10 s")
            full.append((time.perf_counter() - started) * 1000)

        print(
            json.dumps(
                [
                    summary("channel: send stop -> ack (status written)", round_trips),
                    summary("full: request_stop -> registry shows stopped", full),
                    summary("of which request_stop itself (transaction, audit, publish, XADD)", issuing),
                ],
                indent=2,
            )
        )
    finally:
        if agent is not None:
            agent.stop()
        redis_server.terminate()
        redis_server.wait(timeout=10)
        if args.registry == "postgres":
            from django.db import connections

            connections.close_all()
            _pg_admin(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
