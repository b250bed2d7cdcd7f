"""No single stream entry or lease score from the future can pin an environment online: event
times are clamped to the Redis server's clock at ingest, entries from beyond it are refused,
and liveness does not count a future sighting (a real agent, killed)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time

import pytest

from apps_registry.control import ingest, keys, liveness
from apps_registry.models import Environment
from apps_registry.observability import metrics
from tests.support import identity
from tests.support.cluster import LEASE_INTERVAL, OFFLINE_AFTER, _create_database, worker_environ
from tests.support.processes import PYTHON, Process, free_port, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

ENV = "env_clock"
HOUR = 3600.0


def _status(name: str) -> str:
    ingest.ingest()
    env = Environment.objects.filter(name=name).first()
    return liveness.environment_statuses([env])[name][0] if env else "absent"


def test_future_entries_and_scores_do_not_pin_liveness(redis_conn, settings, tmp_path, caplog):
    settings.APP_CONFIG = dataclasses.replace(
        settings.APP_CONFIG, lease_interval=LEASE_INTERVAL, offline_after=OFFLINE_AFTER
    )
    env = {**worker_environ(ENV, free_port()), "APP_STORAGE_DIR": str(tmp_path / "storage")}
    _create_database(env["DB_DATABASE"])
    agent = Process("clock-agent", [PYTHON, "manage.py", "run_worker"], env, tmp_path).start()
    try:
        wait_until(lambda: _status(ENV) == "online", timeout=30, interval=0.2, message="agent online")

        # A forged heartbeat an hour ahead, by id and by its own time. Every entry the agent
        # appends after it inherits the future id (stream ids only grow).
        future = time.time() + HOUR
        forged = {"env": ENV, "url": env["ENVIRONMENT_URL"], "version": "x", "pid": 1, "at": future}
        # Signed with the agent's own key: the clock rules hold for genuine entries too.
        key = identity.worker_key(env["APP_STORAGE_DIR"], ENV)
        signed = identity.signed_fields("heartbeat", forged, ENV, key=key)
        redis_conn.xadd(keys.events_stream(), signed, id=f"{int(future * 1000)}-0")
        caplog.clear()
        refused = metrics.EVENTS_REFUSED.labels(reason="future")._value.get()
        wait_until(lambda: ingest.ingest() == 0, timeout=10, interval=0.1, message="stream drained")
        assert any("refusing" in r.getMessage() for r in caplog.records), "the forged entry is refused, logged"
        assert metrics.EVENTS_REFUSED.labels(reason="future")._value.get() == refused + 1, "and counted"
        # The agent's own beats (future ids, sane times) still count, clamped to now.
        time.sleep(2 * LEASE_INTERVAL + 0.1)  # a beat or two appended behind the forged id
        assert _status(ENV) == "online"
        beat = Environment.objects.get(name=ENV).last_heartbeat
        assert beat is None or beat <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)

        agent.kill()
        # A lease score and a database heartbeat from the future (as a jump of the Redis clock
        # or a restore of a pinned registry would leave them) are not signs of life either.
        identity.write_lease(ENV, time.time() + HOUR, key=key, client=redis_conn)
        Environment.objects.filter(name=ENV).update(last_heartbeat=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
        started = time.monotonic()
        wait_until(lambda: _status(ENV) == "offline", timeout=OFFLINE_AFTER + 5, interval=0.2, message="offline")
        assert time.monotonic() - started <= OFFLINE_AFTER + 2
    finally:
        agent.stop()
