"""Moves and drains on the real cluster (supervisor gunicorn, env_a/env_b with their agents,
real ``rqworker app_starts`` processes, PostgreSQL, Redis), driven through the API:

- a running app moves from env_a to env_b while a client sends ~20 requests/s through the
  proxy: no request fails, the answers switch from env_a to env_b, and the app's data (its
  first admin, written at its first start) is intact: the admin logs in through the proxy;
- a move whose queue worker is SIGKILLed at each step in turn (a test hook in the job, a real
  SIGKILL of the process) is resumed by the next queue worker and ends on its target, and the
  app answers through the proxy after every kill: from the source or the target, never neither;
- draining env_a with 10 apps on it ends with each running on env_b and env_a empty.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
import urllib.parse

import pytest

from apps_registry.control.lifecycle.move import KILL_AT_ENV, STEPS
from tests.control.test_queue import ENVS, Api
from tests.support.processes import wait_until

pytestmark = pytest.mark.cluster
PASSWORD = "move-admin-pass-1"


def _get(base: str, path: str, headers: dict | None = None) -> tuple[int, str, float, http.client.HTTPResponse]:
    """One GET without redirects: status, the serving environment, seconds taken, response."""
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    started = time.monotonic()
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("X-App-Environment", ""), time.monotonic() - started, response
    finally:
        conn.close()


def wait_job(api: Api, job_id: str, timeout: float = 60.0) -> dict:
    def done():
        status, body = api("GET", f"/jobs/{job_id}")
        assert status == 200, body
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(done, timeout=timeout, interval=0.1, message=f"job {job_id} done")


def placements(api: Api, name: str) -> dict:
    return api.statuses(name)["statuses"]


class Load:
    """~20 GETs/s through the proxy until stopped: every status, environment and latency."""

    def __init__(self, base: str, path: str, rate: float = 20.0):
        self.base, self.path, self.period = base, path, 1.0 / rate
        self.results: list[tuple[int, str, float]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopped.is_set() and len(self.results) < 5000:
            try:
                status, env, took, _ = _get(self.base, self.path)
            except OSError as error:
                status, env, took = 0, str(error), 0.0
            self.results.append((status, env, took))
            self.stopped.wait(max(0.0, self.period - took))

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join(timeout=20)


def _log_in(base: str, name: str) -> int:
    """Log in to the app's admin through the proxy as its first admin; the status of the POST
    (302 on success: the user row written at the app's first start is there)."""
    path = f"/apps/{name}/admin/login/"
    status, _env, _took, response = _get(base, path)
    assert status == 200
    cookies = [c.split(";", 1)[0] for c in response.headers.get_all("Set-Cookie") or []]
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    try:
        conn.request("GET", path, headers={"Cookie": "; ".join(cookies)})
        page = conn.getresponse()
        html = page.read().decode()
        cookies += [c.split(";", 1)[0] for c in page.headers.get_all("Set-Cookie") or []]
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
        form = urllib.parse.urlencode(
            {"csrfmiddlewaretoken": token, "username": "admin", "password": PASSWORD, "next": f"/apps/{name}/admin/"}
        )
        conn.request(
            "POST",
            path,
            body=form,
            headers={
                "Cookie": "; ".join(cookies),
                "Content-Type": "application/x-www-form-urlencoded",
                "Referer": f"{base}{path}",
                "Origin": base,
            },
        )
        answer = conn.getresponse()
        answer.read()
        return answer.status
    finally:
        conn.close()


def _create_running(api: Api, name: str, env: str) -> None:
    body = {"name": name, "environments": [env], "start": True, "admin_password": PASSWORD}
    status, created = api("POST", "/apps", body)
    assert status == 201, created
    api.wait_statuses(name, {env: "running"}, timeout=60)


def test_a_running_app_moves_under_load_with_no_failed_request(api: Api, movers, cluster_logs):
    cluster = cluster_logs
    movers.start(1, **movers.overrides)
    name = "mv_load"
    _create_running(api, name, "env_a")
    page = f"/apps/{name}/admin/login/"
    wait_until(lambda: _get(cluster.url, page)[0] == 200, timeout=10, interval=0.05, message=f"{name} serves")
    with Load(cluster.url, page) as load:
        wait_until(lambda: len(load.results) >= 10, timeout=10, interval=0.05, message="load running")
        status, body = api("POST", f"/apps/{name}/move", {"to": ["env_b"]})
        assert status == 202, body
        job = wait_job(api, body["job_id"])
        count = len(load.results)
        wait_until(lambda: len(load.results) >= count + 10, timeout=10, interval=0.05, message="load after the move")
    assert job["status"] == "succeeded", job
    assert [s["status"] for s in job["steps"]] == ["succeeded"] * len(STEPS)
    failed = [r for r in load.results if r[0] != 200]
    assert failed == [], failed[:5]
    served = [env for _status, env, _took in load.results]
    assert served[0] == "env_a" and served[-1] == "env_b", sorted(set(served))
    switch_at = served.index("env_b")
    assert set(served[switch_at:]) == {"env_b"}, "a request went back to the source after the switch"
    assert len(load.results) >= 40
    assert placements(api, name) == {"env_b": "running"}
    assert _log_in(cluster.url, name) == 302  # its data (the first admin) is intact on env_b
    # Bad input changes nothing: unknown, offline or same environments are refused.
    assert api("POST", f"/apps/{name}/move", {"to": ["env_b"]})[0] == 409
    assert api("POST", f"/apps/{name}/move", {"to": ["nowhere"]})[0] == 409
    assert api("POST", f"/apps/{name}/move", {"to": []})[0] == 400
    assert api("POST", "/apps/no_such_app/move", {"to": ["env_a"]})[0] == 404
    assert placements(api, name) == {"env_b": "running"}


def test_a_move_killed_at_each_step_ends_on_one_side(api: Api, movers, cluster_logs):
    """Two moves (env_a → env_b, then back), each killed at three steps in turn: the job's
    n-th run SIGKILLs its queue worker at the n-th step named in the hook."""
    cluster = cluster_logs
    name = "mv_kill"
    movers.start(1, **movers.overrides)
    _create_running(api, name, "env_a")
    movers.stop_all()  # from here on, each queue worker is started to be killed (or to finish)
    page = f"/apps/{name}/admin/login/"
    plans = [("env_a", "env_b", STEPS[:3]), ("env_b", "env_a", STEPS[3:])]
    for source, target, kills in plans:
        status, body = api("POST", f"/apps/{name}/move", {"to": [target]})
        assert status == 202, body
        for step in kills:
            (victim,) = movers.start(1, **movers.overrides, **{KILL_AT_ENV: ",".join(kills)})
            wait_until(lambda v=victim: not v.alive(), timeout=60, interval=0.05, message=f"killed at {step}")
            assert victim.popen.returncode == -9, f"the queue worker was not SIGKILLed at {step}"
            _status, job = api("GET", f"/jobs/{body['job_id']}")
            assert job["status"] == "running" and any(
                s["name"] == step and s["status"] == "running" for s in job["steps"]
            ), job
            code, env, _took, _ = _get(cluster.url, page)
            assert (code, env in (source, target)) == (200, True), f"not served after the kill at {step}: {code}"
        # A queue worker without the hook resumes the job from the step it died in.
        movers.start(1, **movers.overrides)
        job = wait_job(api, body["job_id"], timeout=60)
        assert job["status"] == "succeeded", job
        assert placements(api, name) == {target: "running"}
        assert _get(cluster.url, page)[:2] == (200, target)
        movers.stop_all()


def test_draining_an_environment_moves_its_ten_apps(api: Api, movers, cluster_logs):
    movers.start(2, **movers.overrides)
    names = [f"mv_drain_{i}" for i in range(10)]
    for name in names:
        status, created = api("POST", "/apps", {"name": name, "environments": ["env_a"], "start": True})
        assert status == 201, created
    for name in names:
        api.wait_statuses(name, {"env_a": "running"}, timeout=90)
    status, body = api("POST", "/environments/env_a/drain")
    assert status == 202, body
    # A draining environment takes no new apps.
    refused = api("POST", "/apps", {"name": "mv_drain_new", "environments": ["env_a"]})
    assert refused[0] == 400 and "draining" in str(refused[1]), refused
    envs = {e["name"]: e for e in api("GET", "/environments")[1]["environments"]}
    assert envs["env_a"]["draining"] is True
    job = wait_job(api, body["job_id"], timeout=90)
    try:
        assert job["status"] == "succeeded", job
        for name in names:
            assert placements(api, name) == {"env_b": "running"}, name
        apps = api("GET", "/apps")[1]["apps"]
        assert not [a["name"] for a in apps if "env_a" in a["environments"]]
    finally:
        assert api("POST", "/environments/env_a/undrain") == (200, {"name": "env_a", "draining": False})
    assert all(name in ENVS for name in envs)
