"""200 environments heartbeating every second: the supervisor's and Redis's CPU.

    .venv/bin/python bench/heartbeats.py [--environments 200] [--seconds 30] [--redis-db 14]

What it does: starts a private redis-server and a supervisor gunicorn (2 processes ×
4 threads) on its own PostgreSQL registry. Then, for ``--seconds``, this process plays N
worker agents, each beating once a second exactly as ``run_worker`` does (one pipeline per
beat: the info hash, the signed lease in ``P:lease:<env>:<key>``, a ``heartbeat`` event on ``P:events``),
while an operator's open Environments page polls the live status endpoint every 2 s (which
applies the waiting events to the registry and derives every environment's liveness). It
reports the CPU used by the supervisor's processes and by redis-server (from /proc, as a share
of one core), the beats sent, the events applied, the backlog left, and the status endpoint's
latency. Everything it created is removed at the end.
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
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(root_pid: int) -> float:
    """User + system CPU of a process and all its descendants (live ones)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / TICKS
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(pid, 0.0) for pid in tree)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--environments", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--redis-db", default="14", help="unused (a private redis-server is started)")
    args = parser.parse_args()
    os.environ.setdefault("TEST_REDIS_DB", args.redis_db)

    from tests.faults.harness import PrivateRedis
    from tests.support import services
    from tests.support.processes import free_port, gunicorn, http_ok, manage, wait_until

    log_dir = Path(tempfile.mkdtemp(prefix="heartbeat-bench-"))
    private = PrivateRedis(log_dir)
    env = {
        **services.supervisor_test_environ(),
        "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",
        "DB_DATABASE": f"{services.RUN_ID}_hbbench",
        "APP_SUPERVISOR_REDIS_URL": private.url,
        "APP_COMMAND_REDIS_URL": private.url,
    }
    web = None
    try:
        private.start()
        from registry_db import create_migrated

        create_migrated(env)
        result = manage(["shell", "-c", "from django.contrib.auth.models import User; "
                         "User.objects.create_superuser('bench', password='bench-pass')"], env)  # fmt: skip
        if result.returncode:
            raise SystemExit(result.stderr)
        os.environ.update(env)
        import django

        django.setup()
        from django.db import connections

        from apps_registry import signing
        from apps_registry.control import keys, protocol
        from apps_registry.models import Environment
        from bench.admin_list import login

        client = private.client()
        names = [f"hb_{i:03d}" for i in range(args.environments)]
        # Each environment signs as its agent would (docs/security.md).
        env_keys = {name: signing.generate() for name in names}
        publics = {name: signing.public_text(key) for name, key in env_keys.items()}

        def beat(event_type: str) -> None:
            now = time.time()
            pipe = client.pipeline(transaction=False)
            for name in names:
                registration = protocol.Registration(
                    env=name,
                    url=f"http://10.0.0.{1 + names.index(name) % 250}:8000",
                    proxy_url="",
                    version="bench",
                    host="bench",
                    pid=1,
                    apps_running=(),
                    at=now,
                    heartbeat=event_type == "heartbeat",
                )
                lease = protocol.Lease(env=name, at=now).encode(env_keys[name])
                pipe.set(keys.lease(name, signing.fingerprint(publics[name])), lease)
                pipe.xadd(
                    keys.events_stream(),
                    protocol.sign_event(registration, env_keys[name], publics[name]),
                    maxlen=protocol.EVENTS_MAXLEN,
                    approximate=True,
                )
            pipe.execute()

        port = free_port()
        web = gunicorn("supervisor", port, env, log_dir, workers=2, threads=4).start()
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=30, interval=0.1)
        cookie = login(port, "bench", "bench-pass")
        beat("register")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        def poll() -> tuple[float, dict]:
            pks = ",".join(str(pk) for pk in Environment.objects.values_list("pk", flat=True))
            t0 = time.perf_counter()
            conn.request("GET", f"/admin/app-supervisor/status.json?environments={pks}", headers={"Cookie": cookie})
            response = conn.getresponse()
            body = json.loads(response.read())
            return time.perf_counter() - t0, body

        wait_until(lambda: Environment.objects.count() == args.environments or poll() and False, timeout=60)
        connections.close_all()

        stop = threading.Event()
        sent = [0]

        def agents() -> None:
            next_at = time.monotonic()
            while not stop.is_set():
                beat("heartbeat")
                sent[0] += len(names)
                next_at += 1.0
                stop.wait(max(0.0, next_at - time.monotonic()))

        supervisor_cpu0, redis_cpu0 = cpu_seconds(web.pid), cpu_seconds(private.process.pid)
        own_cpu0 = time.process_time()
        began = time.monotonic()
        generator = threading.Thread(target=agents, daemon=True)
        generator.start()
        latencies: list[float] = []
        online = 0
        while time.monotonic() - began < args.seconds:
            latency, body = poll()
            latencies.append(latency)
            online = sum(1 for e in body["environments"].values() if e["status"] == "online")
            stop.wait(max(0.0, 2.0 - latency))
        stop.set()
        generator.join(timeout=10)
        elapsed = time.monotonic() - began
        supervisor_cpu = cpu_seconds(web.pid) - supervisor_cpu0
        redis_cpu = cpu_seconds(private.process.pid) - redis_cpu0
        own_cpu = time.process_time() - own_cpu0
        backlog = client.xinfo_groups(keys.events_stream())
        lag = max((group.get("lag") or 0) for group in backlog) if backlog else 0
        conn.close()
        print(
            json.dumps(
                {
                    "environments": args.environments,
                    "seconds": round(elapsed, 1),
                    "beats_sent": sent[0],
                    "beats_per_s": round(sent[0] / elapsed, 1),
                    "supervisor_cpu_pct_of_one_core": round(100 * supervisor_cpu / elapsed, 1),
                    "redis_cpu_pct_of_one_core": round(100 * redis_cpu / elapsed, 1),
                    "agents_simulator_cpu_pct_of_one_core": round(100 * own_cpu / elapsed, 1),
                    "status_endpoint_p50_ms": round(percentile(latencies, 50) * 1000, 1),
                    "status_endpoint_p99_ms": round(percentile(latencies, 99) * 1000, 1),
                    "online_at_end": online,
                    "events_backlog_at_end": lag,
                },
                indent=1,
            )
        )
    finally:
        if web is not None:
            web.stop()
        private.process.stop()
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: S110 (Django may not be set up yet)
            pass
        services.drop_run_databases()


if __name__ == "__main__":
    main()
