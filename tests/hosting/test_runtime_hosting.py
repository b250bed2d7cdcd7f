"""Hosted apps served by a real worker gunicorn, driven by ``manage.py host_app`` (no agent).

One worker (two gunicorn processes) for the module; apps are named ``rt_*`` so that they never
meet other tests' apps in the same run.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import re
import secrets
import subprocess
import threading
import time
from http.cookies import SimpleCookie
from pathlib import Path

import psycopg
import pytest

from tests.support import services
from tests.support.processes import PYTHON, ROOT, free_port, gunicorn, manage, wait_until

pytestmark = pytest.mark.cluster

ENV_NAME = "env_a"


def _pg(dbname: str = "postgres", **kwargs) -> psycopg.Connection:
    return psycopg.connect(
        host=services.PG_HOST, port=services.PG_PORT, user=services.PG_USER, dbname=dbname, autocommit=True, **kwargs
    )


def _ensure_database(name: str) -> None:
    with _pg() as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def _database_exists(name: str) -> bool:
    with _pg() as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def _app_db(app: str) -> str:
    return f"{services.RUN_ID}_{app}"


class Worker:
    def __init__(self, port: int, env: dict[str, str], storage: Path):
        self.port = port
        self.env = env
        self.storage = storage

    def host_app(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return manage(["host_app", *args], {**self.env, **(env or {})})

    def host_app_popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [PYTHON, "manage.py", "host_app", *args],
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def state(self, app: str) -> dict | None:
        path = self.storage / "runtime" / f"{ENV_NAME}.json"
        return json.loads(path.read_text())["apps"].get(app)

    def client(self) -> Client:
        return Client(self.port)


class Client:
    """A tiny browser: keeps cookies by path, no redirects followed."""

    def __init__(self, port: int):
        self.port = port
        self.cookies: dict[str, tuple[str, str]] = {}

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        headers = dict(headers or {})
        sent = [f"{n}={v}" for n, (v, p) in self.cookies.items() if path.startswith(p)]
        if sent:
            headers["Cookie"] = "; ".join(sent)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        for header in response.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                if morsel["max-age"] == "0" or not morsel.value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = (morsel.value, morsel["path"] or "/")
        return response.status, response.headers, data.decode(errors="replace")

    def get(self, path: str, **headers):
        return self.request("GET", path, headers=headers)

    def post_form(
        self,
        path: str,
        fields: dict[str, str],
        files: dict[str, tuple[str, bytes]] | None = None,
        headers: dict[str, str] | None = None,
    ):
        boundary = secrets.token_hex(12)
        parts = []
        for name, value in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        for name, (filename, content) in (files or {}).items():
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            )
            parts.append(head.encode() + content + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers = {**(headers or {}), "Content-Type": f"multipart/form-data; boundary={boundary}"}
        return self.request("POST", path, body, headers)

    def csrf_token(self, path: str) -> str:
        status, _, html = self.get(path)
        assert status == 200, (path, status)
        return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)

    def login(self, app: str, username: str, password: str, headers: dict[str, str] | None = None) -> int:
        return self.login_response(app, username, password, headers)[0]

    def login_response(self, app: str, username: str, password: str, headers: dict[str, str] | None = None):
        login = f"/apps/{app}/admin/login/"
        token = self.csrf_token(login)
        fields = {"csrfmiddlewaretoken": token, "username": username, "password": password}
        return self.post_form(
            f"{login}?next=/apps/{app}/admin/", {**fields, "next": f"/apps/{app}/admin/"}, headers=headers
        )


def _statuses(client: Client, path: str, count: int = 6) -> set[int]:
    """The answers of several requests: both gunicorn processes are asked with some luck."""
    return {client.get(path)[0] for _ in range(count)}


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    storage = tmp_path_factory.mktemp("worker_a")
    port = free_port()
    _ensure_database(f"{services.RUN_ID}_worker_a")
    env = {
        "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",  # not the in-process tests' settings
        "APP_MODE": "worker",
        "SECRET_KEY": "test-secret-key-not-for-production",
        "DEBUG": "false",
        "ALLOWED_HOSTS": "*",
        "DB_DIALECT": "postgres",
        "DB_HOST": services.PG_HOST,
        "DB_PORT": str(services.PG_PORT),
        "DB_USER": services.PG_USER,
        "DB_DATABASE": f"{services.RUN_ID}_worker_a",
        "APP_SUPERVISOR_REDIS_URL": services.redis_url(),
        "APP_COMMAND_REDIS_URL": services.redis_url(),
        "APP_REDIS_PREFIX": services.RUN_ID,
        "APP_DB_PREFIX": f"{services.RUN_ID}_",
        "ENVIRONMENT_NAME": ENV_NAME,
        "ENVIRONMENT_URL": f"http://127.0.0.1:{port}",
        "APP_STORAGE_DIR": str(storage),
        # Its own uploads folder (not the session's shared one that tests/settings.py exports).
        "APP_MEDIA_DIR": str(storage / "media"),
    }
    web = gunicorn("runtime_worker_a", port, env, storage, workers=2, threads=2).start()
    handle = Worker(port, env, storage)
    handle.web = web
    # Start the two shared apps while gunicorn boots.
    starts = [
        handle.host_app_popen(
            "rt_a", "--modules", "contacts,tasks", "--admin-user", "alice", "--admin-password", "pw-a"
        ),
        handle.host_app_popen("rt_b", "--modules", "tasks", "--admin-user", "bob", "--admin-password", "pw-b"),
    ]
    try:
        for start in starts:
            out, err = start.communicate(timeout=120)
            assert start.returncode == 0, err
        wait_until(lambda: Client(port).get("/apps/rt_a/")[0] == 302, timeout=30, message="worker serving rt_a")
        yield handle
    finally:
        web.stop()
        print(web.log()[-3000:])


def test_a_held_serving_lock_stalls_only_its_own_requests_on_the_gevent_worker(worker):
    """Workers run gevent (gunicorn.conf.py): while something holds an app's serving lock
    exclusively (as a stop does, for an instant), that app's requests wait without blocking
    their process, so /healthz of the same processes keeps answering; they are served once it
    is let go."""
    assert "Using worker: gevent" in worker.web.log()
    lock = worker.storage / "runtime" / f"{ENV_NAME}.serving" / "rt_a.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDONLY | os.O_CREAT)
    answers: list[int] = []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Enough requests in flight to reach both gunicorn processes.
        waiting = [
            threading.Thread(target=lambda: answers.append(Client(worker.port).get("/apps/rt_a/")[0])) for _ in range(6)
        ]
        for thread in waiting:
            thread.start()
        for _ in range(5):
            began = time.monotonic()
            assert Client(worker.port).get("/healthz")[0] == 200
            assert time.monotonic() - began < 1.0
        assert answers == []  # still waiting for the lock
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    for thread in waiting:
        thread.join(10)
    assert answers == [302] * 6


def test_error_pages_and_changes_seen_within_a_second(worker):
    client = worker.client()
    status, headers, body = client.get("/apps/rt_nope/admin/")
    assert status == 404 and "<html" in body and "Traceback" not in body
    status, _, body = client.get("/apps/rt_nope/", Accept="application/json")
    assert status == 404 and json.loads(body)["status"] == "unknown"
    assert client.get("/apps/Bad..Name/")[0] == 404

    assert worker.host_app("rt_b", "--stop").returncode == 0
    seen = time.monotonic()
    wait_until(lambda: _statuses(client, "/apps/rt_b/admin/") == {503}, timeout=1.0, message="stop seen")
    assert time.monotonic() - seen < 1.0
    status, headers, body = client.get("/apps/rt_b/admin/")
    assert headers["Retry-After"].isdigit() and "stopped" in body and "Traceback" not in body
    status, headers, body = client.get("/apps/rt_b/", Accept="application/json")
    assert json.loads(body) == {"app": "rt_b", "status": "stopped", "retry_after": int(headers["Retry-After"])}

    assert worker.host_app("rt_b", "--modules", "tasks").returncode == 0
    wait_until(lambda: _statuses(client, "/apps/rt_b/admin/") == {302}, timeout=1.0, message="start seen")


def test_login_create_contact_and_download_its_file(worker):
    client = worker.client()
    assert client.get("/apps/rt_a/")[0] == 302
    assert client.login("rt_a", "alice", "wrong") == 200
    assert client.login("rt_a", "alice", "pw-a") == 302
    value, path = client.cookies["app_rt_a_sessionid"]
    assert path == "/apps/rt_a/" and "sessionid" not in client.cookies and "csrftoken" not in client.cookies

    add = "/apps/rt_a/admin/contacts/contact/add/"
    fields = {"csrfmiddlewaretoken": client.csrf_token(add), "name": "Ada Lovelace", "company": "Engines"}
    fields.update(email="ada@example.org", phone="", notes="first customer", _save="Save")
    status, headers, body = client.post_form(add, fields, {"attachment": ("notes.txt", b"analytical\n")})
    assert status == 302, body[:2000]
    status, _, body = client.get("/apps/rt_a/admin/contacts/contact/?q=Lovelace")
    assert status == 200 and "Ada Lovelace" in body
    assert (worker.storage / "media" / "rt_a" / "contacts" / "notes.txt").read_bytes() == b"analytical\n"

    status, headers, body = client.get("/apps/rt_a/files/contacts/notes.txt")
    assert status == 200 and body == "analytical\n" and "attachment" in headers["Content-Disposition"]
    assert client.get("/apps/rt_a/files/../../runtime/env_a.json")[0] == 404
    assert Client(worker.port).get("/apps/rt_a/files/contacts/notes.txt")[0] == 302  # anonymous: to login


def test_apps_are_isolated(worker):
    alice = worker.client()
    assert alice.login("rt_a", "alice", "pw-a") == 302
    session_a = alice.cookies["app_rt_a_sessionid"][0]

    # a's session key means nothing to b, whatever cookie name carries it.
    thief = worker.client()
    thief.cookies["app_rt_b_sessionid"] = (session_a, "/apps/rt_b/")
    status, headers, _ = thief.get("/apps/rt_b/admin/")
    assert status == 302 and "/login/" in headers["Location"]
    assert worker.client().login("rt_b", "alice", "pw-a") == 200  # a's user does not exist in b

    bob = worker.client()
    assert bob.login("rt_b", "bob", "pw-b") == 302
    status, _, body = bob.get("/apps/rt_b/admin/")
    assert status == 200 and "Tasks" in body and "Contacts" not in body
    assert bob.get("/apps/rt_b/admin/contacts/contact/")[0] == 404  # module not enabled in b
    assert bob.get("/apps/rt_a/admin/")[0] == 302  # bob's cookie is not sent to a: login

    with _pg(_app_db("rt_a")) as conn:
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert "contacts_contact" in tables and not any(t.startswith("apps_registry") for t in tables)
    with _pg(_app_db("rt_b")) as conn:
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        users = [row[0] for row in conn.execute("SELECT username FROM auth_user")]
    assert "contacts_contact" not in tables and users == ["bob"]


def test_remove_keeps_data_unless_asked_and_drop_starts_empty(worker):
    assert worker.host_app("rt_r", "--modules", "contacts").returncode == 0
    with _pg(_app_db("rt_r")) as conn:
        conn.execute(
            "INSERT INTO contacts_contact (name, email, phone, company, notes, attachment, created_at,"
            " updated_at) VALUES ('Kept', '', '', '', '', '', now(), now())"
        )
    assert worker.host_app("rt_r", "--remove").returncode == 0
    assert worker.state("rt_r") is None
    wait_until(lambda: _statuses(worker.client(), "/apps/rt_r/") == {404}, timeout=1.0, message="removal seen")
    assert worker.host_app("rt_r", "--modules", "contacts").returncode == 0
    with _pg(_app_db("rt_r")) as conn:
        assert conn.execute("SELECT name FROM contacts_contact").fetchall() == [("Kept",)]

    assert worker.host_app("rt_r", "--remove", "--drop-data").returncode == 0
    assert not _database_exists(_app_db("rt_r"))
    assert (
        worker.host_app("rt_r", "--modules", "contacts", "--admin-user", "new", "--admin-password", "y").returncode == 0
    )
    with _pg(_app_db("rt_r")) as conn:
        assert conn.execute("SELECT count(*) FROM contacts_contact").fetchone() == (0,)
        assert conn.execute("SELECT username FROM auth_user").fetchall() == [("new",)]


def test_two_initialisations_of_one_app_never_overlap(worker):
    runs = [worker.host_app_popen("rt_p", "--modules", "contacts,tasks") for _ in range(2)]
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
    with _pg(_app_db("rt_p")) as conn:
        rows = conn.execute(
            "SELECT pid, first_init, migrations_applied, started_at, finished_at FROM appsup_initialisation"
            " ORDER BY started_at"
        ).fetchall()
    assert len(rows) == 2 and rows[0][0] != rows[1][0]
    (_, first_a, applied_a, start_a, end_a), (_, first_b, applied_b, start_b, end_b) = rows
    assert end_a is not None and end_a <= start_b  # the second began after the first had finished
    assert (first_a, first_b) == (True, False) and applied_a > 0 and applied_b == 0


def test_database_user_without_createdb_gets_a_clear_error(worker):
    role = f"{services.RUN_ID}_nocreate"
    with _pg() as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN NOCREATEDB')
    try:
        result = worker.host_app("rt_n", "--modules", "tasks", env={"DB_USER": role})
        assert result.returncode != 0
        assert "may not create databases" in result.stderr and "Traceback" not in result.stderr
        entry = worker.state("rt_n")
        assert entry["status"] == "error" and "may not create databases" in entry["error"]
        assert _statuses(worker.client(), "/apps/rt_n/") == {503}
    finally:
        with _pg() as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_the_eleventh_wrong_password_on_an_app_admin_is_refused_per_app(worker, redis_conn):
    """Counted in Redis (the worker's two gunicorn processes share it), per app, username and
    address: the address is the browser's, from X-Forwarded-For of a trusted proxy (here the
    test itself, on loopback)."""
    assert (
        worker.host_app("rt_lock", "--modules", "tasks", "--admin-user", "alice", "--admin-password", "pw-l").returncode
        == 0
    )
    wait_until(lambda: Client(worker.port).get("/apps/rt_lock/")[0] == 302, timeout=30, message="rt_lock served")
    attacker = {"X-Forwarded-For": "203.0.113.9"}
    client = worker.client()
    for number in range(1, 11):
        assert client.login("rt_a", "alice", f"wrong-{number}", attacker) == 200, number
    status, headers, body = client.login_response("rt_a", "alice", "wrong-11", attacker)
    assert status == 429, body[-500:]
    assert int(headers["Retry-After"]) > 0 and "Too many failed logins" in body
    assert client.login("rt_a", "alice", "pw-a", attacker) == 429  # right password, still paused
    assert any(redis_conn.scan_iter(match=f"{services.RUN_ID}:login:*")), "counts kept in Redis"

    # The same username on another app, another user, another address: not paused.
    assert worker.client().login("rt_lock", "alice", "pw-l", attacker) == 302
    assert worker.client().login("rt_b", "bob", "pw-b", attacker) == 302
    assert worker.client().login("rt_a", "alice", "pw-a", {"X-Forwarded-For": "203.0.113.10"}) == 302
