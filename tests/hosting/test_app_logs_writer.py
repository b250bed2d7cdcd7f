"""The worker's log-line writer when Redis goes away and comes back: recording never waits,
lines written meanwhile are dropped and counted, one warning says so and one says it is back
(real Redis, and a port where none listens)."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import time

from apps_registry.control import keys
from tests.support import services
from tests.support.processes import PYTHON, ROOT, free_port, wait_until
from worker_agent.hosting import app_logs


def test_redis_down_drops_and_counts_lines_then_writing_resumes(settings, redis_conn, caplog):
    caplog.set_level(logging.WARNING, logger="worker_agent.hosting.app_logs")
    real = settings.APP_CONFIG
    settings.APP_CONFIG = dataclasses.replace(
        real, mode="worker", environment_name="env_w", command_redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    before = app_logs.dropped
    started = time.monotonic()
    for i in range(3):
        app_logs.record("wrt", "info", f"GET /{i} 200 1ms")
    assert time.monotonic() - started < 0.1  # nothing waits for Redis
    wait_until(lambda: app_logs.dropped >= before + 3, timeout=10, message="lines dropped")
    lost = [r for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(lost) == 1

    settings.APP_CONFIG = dataclasses.replace(real, mode="worker", environment_name="env_w")
    app_logs.record("wrt", "error", "GET /back 500 2ms\x1b[0m\n" + "y" * 900)
    stream = keys.app_log("wrt", "env_w")
    entries = wait_until(lambda: redis_conn.xrange(stream), timeout=10, message="a line written again")
    ((_id, fields),) = entries
    assert fields["level"] == "error" and fields["message"].startswith("GET /back 500 2ms [0m y")
    assert len(fields["message"]) == app_logs.MAX_MESSAGE
    back = wait_until(lambda: [r for r in caplog.records if "written to Redis again" in r.getMessage()], timeout=10)
    assert "3 line(s) dropped" in back[0].getMessage()
    assert len([r for r in caplog.records if "cannot be written" in r.getMessage()]) == 1


def test_without_redis_nothing_is_recorded(settings):
    settings.APP_CONFIG = dataclasses.replace(settings.APP_CONFIG, mode="standalone")
    assert not app_logs.enabled()
    app_logs.record("wrt", "info", "ignored")  # returns, queues nothing


RECORD_AND_EXIT = """
import django
django.setup()
from worker_agent.hosting import app_logs
app_logs.record("wrx", "info", "the last line before exit")
"""


def test_a_process_that_records_and_exits_at_once_exits_and_its_line_is_written(redis_conn):
    # The writer is a daemon thread: frozen mid-write by the interpreter's finalization it held
    # the Redis pool's lock and the pool's __del__ waited for it (host_app --stop hung at exit).
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",
        "APP_MODE": "worker",
        "SECRET_KEY": "test-secret-key-not-for-production",
        "APP_SUPERVISOR_REDIS_URL": services.redis_url(),
        "APP_COMMAND_REDIS_URL": services.redis_url(),
        "APP_REDIS_PREFIX": services.RUN_ID,
        "ENVIRONMENT_NAME": "env_x",
        "ENVIRONMENT_URL": "http://127.0.0.1:9",
    }
    stream = keys.app_log("wrx", "env_x")
    redis_conn.delete(stream)
    for attempt in range(1, 6):
        done = subprocess.run([PYTHON, "-c", RECORD_AND_EXIT], cwd=ROOT, env=env, capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert redis_conn.xlen(stream) == attempt  # written before the exit, not lost with it
