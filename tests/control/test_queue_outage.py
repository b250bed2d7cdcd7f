"""The start queue's worker waits out Redis outages instead of exiting: Redis down when it
starts, and Redis dropping in the middle of a job (a private redis-server, stopped and started
again; a real `manage.py rqworker app_starts`)."""

from __future__ import annotations

import signal
import time

import pytest
import redis
import rq
from django.db import connection

from tests.faults.harness import PrivateRedis
from tests.support.cluster import supervisor_environ
from tests.support.processes import PYTHON, Process, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]


def _raw(private: PrivateRedis) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=private.port, socket_timeout=2)  # RQ wants bytes


def _enqueue(private: PrivateRedis, seconds: float) -> rq.job.Job:
    # time.sleep as the job: something that runs long enough for Redis to vanish under it.
    queue = rq.Queue("app_starts", connection=_raw(private))
    return queue.enqueue("time.sleep", seconds)


def _finished(private: PrivateRedis, job_id: str) -> bool:
    job = rq.job.Job.fetch(job_id, connection=_raw(private))
    return job.get_status() == "finished"


def test_queue_worker_waits_out_redis_outages(tmp_path):
    private = PrivateRedis(tmp_path)
    env = {
        **supervisor_environ(),
        "APP_MODE": "supervisor",
        "APP_SUPERVISOR_REDIS_URL": private.url,
        "APP_COMMAND_REDIS_URL": private.url,
        # The test database (migrated): the idle recovery check reads the registry.
        "DB_DATABASE": connection.settings_dict["NAME"],
        "APP_START_LOCK_TTL": "2",
    }
    worker = Process("outage-rqworker", [PYTHON, "manage.py", "rqworker", "app_starts"], env, tmp_path)
    try:
        # 1. Redis is down when it starts: it waits, one line, instead of exiting.
        worker.start()
        wait_until(lambda: "Redis connection lost" in worker.log(), timeout=20, interval=0.1, message="loss logged")
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # bounded: several backoff rounds with Redis still gone
            assert worker.alive(), worker.log()
            time.sleep(0.1)
        private.start()
        wait_until(lambda: "Redis connection restored" in worker.log(), timeout=15, interval=0.1, message="back")
        job = _enqueue(private, 0.05)
        wait_until(lambda: _finished(private, job.id), timeout=15, interval=0.1, message="a job runs")

        # 2. Redis drops in the middle of a job: the worker stays, and runs jobs once it is back.
        job = _enqueue(private, 1.5)
        wait_until(
            lambda: rq.job.Job.fetch(job.id, connection=_raw(private)).get_status() == "started",
            timeout=15,
            interval=0.05,
            message="long job started",
        )
        private.kill()
        job_over = time.monotonic() + 2.0  # the job ends, and tries to record that, with Redis gone
        wait_until(lambda: worker.log().count("Redis connection lost") == 2, timeout=20, interval=0.1, message="lost")
        while time.monotonic() < job_over:  # bounded by the job's length
            assert worker.alive(), worker.log()
            time.sleep(0.1)
        assert worker.alive(), worker.log()
        private.start()  # back, and empty
        wait_until(
            lambda: worker.log().count("Redis connection restored") == 2, timeout=20, interval=0.1, message="back"
        )
        job = _enqueue(private, 0.05)
        wait_until(lambda: _finished(private, job.id), timeout=15, interval=0.1, message="a job runs again")

        log = worker.log()
        assert log.count("Redis connection lost") == 2 and log.count("Redis connection restored") == 2
        assert "quitting" not in log and "could not connect to Redis" not in log, log
        worker.signal(signal.SIGTERM)
        wait_until(lambda: not worker.alive(), timeout=10, interval=0.05, message="stops on SIGTERM")
        assert worker.popen.returncode == 0, worker.log()
    finally:
        worker.stop()
        private.kill()
        job_over = time.monotonic() + 2.0  # the job ends, and tries to record that, with Redis gone
