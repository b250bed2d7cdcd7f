"""The start queue with real processes: the cluster's supervisor (gunicorn) and workers
env_a/env_b, real ``manage.py rqworker app_starts`` processes, requests through the API.

Evidence comes from the real parts: each app database's initialisation table (start/end per
environment, written by the worker under the init lock), the start commands in Redis
(``issued_at``), RQ's job records, the supervisor's audit trail in PostgreSQL.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps_registry.control.start_queue import enqueue, job
from tests.support import schema_check, services
from tests.support.processes import PYTHON, Process, wait_until
from worker_agent.hosting import app_databases

pytestmark = pytest.mark.cluster
LOCK_TTL = "2"
ENVS = ["env_a", "env_b"]


def _template(path: str) -> str:
    parts = path.split("?")[0].strip("/").split("/")
    if parts[0] in ("apps", "environments") and len(parts) > 1:
        parts[1] = "{name}"
    if parts[0] == "jobs" and len(parts) > 1:
        parts[1] = "{job_id}"
    return "/" + "/".join(parts)


class Api:
    """The live supervisor's API; every answer is checked against its served OpenAPI document."""

    def __init__(self, base: str, token: str):
        self.base = base
        self.token = token
        with urllib.request.urlopen(f"{base}/api/v1/openapi.json", timeout=30) as response:
            self.document = json.loads(response.read())

    def __call__(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | None]:
        status, payload = self._call(method, path, body)
        problems = schema_check.response_errors(self.document, _template(path), method, status, payload)
        assert not problems, f"{method} {path} -> {status}: {problems}"
        return status, payload

    def _call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | None]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.base}/api/v1{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            raw = error.read()
            return error.code, json.loads(raw) if raw else None

    def create(self, name: str, start: bool = True) -> str | None:
        status, body = self("POST", "/apps", {"name": name, "environments": ENVS, "start": start})
        assert status == 201, body
        return body.get("request_id")

    def statuses(self, name: str) -> dict:
        status, body = self("GET", f"/apps/{name}")
        assert status == 200, body
        return body

    def wait_statuses(self, name: str, wanted: dict, timeout: float = 40.0) -> dict:
        return wait_until(
            lambda: (body := self.statuses(name))["statuses"] == wanted and body,
            timeout=timeout,
            interval=0.1,
            message=f"{name} statuses {wanted}",
        )


class QueueWorkers:
    """``manage.py rqworker app_starts`` processes against the cluster's supervisor database."""

    def __init__(self, cluster, log_dir):
        self.cluster = cluster
        self.log_dir = log_dir
        self.processes: list[Process] = []
        self.count = 0

    def start(self, n: int, **overrides: str) -> list[Process]:
        env = {**self.cluster.supervisor_env, "APP_START_LOCK_TTL": LOCK_TTL, **overrides}
        started = []
        for _ in range(n):
            self.count += 1
            args = [PYTHON, "manage.py", "rqworker", "app_starts"]
            started.append(Process(f"rqworker-{self.count}", args, env, self.log_dir).start())
        self.processes += started
        self.wait_ready()
        return started

    def wait_ready(self) -> None:
        """Until every live queue worker listens: a job must not find only the first one up."""
        from rq import Worker

        queue = enqueue.get_queue()
        alive = sum(1 for p in self.processes if p.alive())
        wait_until(
            lambda: Worker.count(queue=queue) >= alive, timeout=30, interval=0.05, message="queue workers listening"
        )

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()
        self.processes = []

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} -----\n{p.log()[-3000:]}" for p in self.processes)


@pytest.fixture
def workers(cluster_logs, tmp_path, request):
    pool = QueueWorkers(cluster_logs, tmp_path)
    failed_before = request.session.testsfailed
    yield pool
    if request.session.testsfailed > failed_before:
        print(pool.logs())
    pool.stop_all()


def _supervisor_db(cluster):
    return psycopg.connect(
        host=services.PG_HOST,
        port=services.PG_PORT,
        user=services.PG_USER,
        dbname=cluster.supervisor_env["DB_DATABASE"],
        autocommit=True,
    )


def audit_entry(cluster, request_id: str) -> tuple[str, str]:
    with _supervisor_db(cluster) as conn:
        row = conn.execute(
            "SELECT result, error FROM apps_registry_auditentry WHERE request_id = %s", (request_id,)
        ).fetchone()
    return row


def wait_audit_closed(cluster, request_id: str, timeout: float = 30.0) -> tuple[str, str]:
    return wait_until(
        lambda: (row := audit_entry(cluster, request_id)) and row[0] != "pending" and row,
        timeout=timeout,
        interval=0.1,
        message=f"audit entry {request_id} closed",
    )


def initialisations(app: str) -> list[tuple[str, float, float]]:
    with psycopg.connect(
        host=services.PG_HOST, port=services.PG_PORT, user=services.PG_USER, dbname=f"{services.RUN_ID}_{app}"
    ) as conn:
        return conn.execute(
            "SELECT environment, started_at, finished_at FROM appsup_initialisation ORDER BY started_at"
        ).fetchall()


def assert_no_overlap(app: str) -> list[tuple[str, float, float]]:
    rows = initialisations(app)
    assert rows, f"{app} was never initialised"
    for (_e1, _s1, end1), (_e2, start2, _end2) in zip(rows, rows[1:], strict=False):
        assert end1 is not None and start2 >= end1, f"initialisations of {app} overlap: {rows}"
    return rows


def start_commands(app: str, env: str) -> list[float]:
    """issued_at of every start command of ``app`` sent to ``env``."""
    from apps_registry.control import keys, redis_client

    entries = redis_client.commands().xrange(keys.command_stream(env))
    return [float(f["issued_at"]) for _id, f in entries if f.get("app") == app and f.get("action") == "start"]


def rq_jobs(app: str) -> list:
    from rq.job import Job
    from rq.registry import FinishedJobRegistry

    queue = enqueue.get_queue()
    ids = [i for i in FinishedJobRegistry(queue=queue).get_job_ids() if enqueue.app_of_job(i) == app]
    return [job for job in Job.fetch_many(ids, connection=queue.connection) if job is not None]


def test_start_order_is_stable_per_app_and_spreads_first_starts():
    names = [f"app{i}" for i in range(40)]
    orders = [job.start_order(name, ["env_b", "env_a"]) for name in names]
    assert all(sorted(order) == ENVS for order in orders)
    assert orders == [job.start_order(name, ENVS) for name in names]  # same in every call
    firsts = [order[0] for order in orders]
    assert 10 <= firsts.count("env_a") <= 30, firsts  # both environments take first starts
    three = ["env_a", "env_b", "env_c"]
    assert {tuple(job.start_order(name, three)) for name in names} == {
        ("env_a", "env_b", "env_c"),
        ("env_b", "env_c", "env_a"),
        ("env_c", "env_a", "env_b"),
    }


def test_one_app_starts_one_environment_after_another(api, workers, cluster):
    workers.start(1)
    request_id = api.create("q_serial")
    api.wait_statuses("q_serial", {"env_a": "running", "env_b": "running"})
    rows = assert_no_overlap("q_serial")
    # The job's first environment first; the second (possibly twice: its reconciliation and
    # the command, one after the other) only after the first finished, and not even asked
    # before then.
    first, second = job.start_order("q_serial", ENVS)
    assert rows[0][0] == first and {r[0] for r in rows} == {first, second}
    (second_issued,) = start_commands("q_serial", second)
    assert second_issued >= rows[0][2]
    assert wait_audit_closed(cluster, request_id) == ("ok", "")


def test_different_apps_start_in_parallel_on_two_queue_workers(api, workers):
    workers.start(2)
    names = [f"q_par{i}" for i in range(4)]
    # Created first, then started in one quick burst: the four jobs are all waiting when the
    # queue workers look, so whether they overlap depends on the lock, not on how fast the
    # creations happened to be.
    for name in names:
        api.create(name, start=False)
    for name in names:
        status, body = api("POST", f"/apps/{name}/start")
        assert status == 202, body
    for name in names:
        api.wait_statuses(name, {"env_a": "running", "env_b": "running"}, timeout=60)
        assert_no_overlap(name)
    jobs = [job for name in names for job in rq_jobs(name)]
    assert len({job.worker_name for job in jobs}) == 2, "both queue workers took jobs"
    overlapping = [
        (a.id, b.id)
        for i, a in enumerate(jobs)
        for b in jobs[i + 1 :]
        if a.started_at < b.ended_at and b.started_at < a.ended_at
    ]
    assert overlapping, "no two apps' start jobs ran at the same time"


def test_unreachable_environment_is_an_error_and_can_be_retried(api, workers, cluster_logs):
    workers.start(1)
    cluster_logs.env_b.stop_agent()
    request_id = api.create("q_error")
    body = api.wait_statuses("q_error", {"env_a": "running", "env_b": "error"}, timeout=40)
    assert "not responding" in body["errors"]["env_b"]
    result, error = wait_audit_closed(cluster_logs, request_id)
    assert result == "error" and "env_b" in error
    cluster_logs.env_b.ensure_running()
    status, retry = api("POST", "/apps/q_error/start")
    assert status == 202
    api.wait_statuses("q_error", {"env_a": "running", "env_b": "running"})
    assert wait_audit_closed(cluster_logs, retry["request_id"]) == ("ok", "")
    assert_no_overlap("q_error")


def test_a_start_that_takes_too_long_times_out_visibly(api, workers, cluster):
    # The app's initialisation lock is held here, as by another environment's long
    # initialisation, so the worker cannot finish the start within the queue's timeout.
    workers.start(1, APP_START_TIMEOUT="1")
    db_name = f"{services.RUN_ID}_q_slow"
    server = {"host": services.PG_HOST, "port": services.PG_PORT, "user": services.PG_USER, "autocommit": True}
    with psycopg.connect(dbname="postgres", **server) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    with psycopg.connect(dbname=db_name, **server) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (app_databases.init_lock_key(db_name),))
        request_id = api.create("q_slow")
        result, error = wait_audit_closed(cluster, request_id)
    assert result == "error" and "within 1 s" in error, error


def test_queue_worker_killed_mid_start_is_recovered(api, workers, cluster):
    (victim,) = workers.start(1)
    first, second = job.start_order("q_killed", ENVS)
    request_id = api.create("q_killed")
    wait_until(
        lambda: api.statuses("q_killed")["statuses"] == {first: "starting", second: "queued"},
        timeout=30,
        interval=0.02,
        message=f"start job working on {first}",
    )
    victim.kill()  # the job runs in the queue worker itself: it dies with it
    workers.start(1)
    # The dead job's lock expires; the new worker's recovery check marks what it left behind.
    body = wait_until(
        lambda: (b := api.statuses("q_killed"))["statuses"][second] == "error" and b,
        timeout=30,
        interval=0.1,
        message="interrupted start marked",
    )
    assert body["errors"][second] == "start interrupted"
    assert wait_audit_closed(cluster, request_id) == ("error", "start interrupted")
    status, retry = api("POST", "/apps/q_killed/start")
    assert status == 202
    api.wait_statuses("q_killed", {"env_a": "running", "env_b": "running"})
    assert wait_audit_closed(cluster, retry["request_id"]) == ("ok", "")
    assert_no_overlap("q_killed")


@pytest.fixture
def lrw_app(api, workers):
    workers.start(2)
    api.create("q_lrw", start=False)
    return "q_lrw"


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["start", "stop", "restart"]), st.sampled_from([0.0, 0.05, 0.3])),
        min_size=1,
        max_size=4,
    )
)
def test_last_request_wins_whatever_the_interleaving(api, lrw_app, steps):
    for operation, pause in steps:
        status, _ = api("POST", f"/apps/{lrw_app}/{operation}")
        assert status == 202
        time.sleep(pause)
    final = "stopped" if steps[-1][0] == "stop" else "running"
    api.wait_statuses(lrw_app, {"env_a": final, "env_b": final}, timeout=40)
    assert_no_overlap(lrw_app)
