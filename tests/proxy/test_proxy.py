"""The supervisor's /apps/<name>/ proxy, against a real supervisor gunicorn and real upstreams.

The upstreams here are tiny HTTP servers in this process that echo what they received, so
the tests can see exactly which headers and cookies crossed the proxy (a production app must
never expose that). A silent TCP server stands in for a hung worker; a closed port for a dead
one. Hosted-app behaviour (CSRF login, form save) is in test_proxy_app.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import re
import secrets
import socket
import threading
import time
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import services
from tests.support.processes import free_port, gunicorn, http_ok, manage, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.django_db]

UPLOAD_LIMIT = 4 * 1024 * 1024
READ_TIMEOUT = 6
BIG = 50 * 1024 * 1024
_BLOCK = bytes(range(256)) * 256  # 64 KiB


class Echo(BaseHTTPRequestHandler):
    """Answers under /apps/<name>/<action>; remembers every path it was asked for."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm and
    # the peer's delayed ACK would add 40 ms to every answer.
    disable_nagle_algorithm = True

    def log_message(self, *args):  # keep the test output quiet
        pass

    def _send(self, status: int, body: bytes, headers: list[tuple[str, str]] = (), ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self):
        self.server.seen.append(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        action = self.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        if action == "big":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(BIG))
            self.end_headers()
            for _ in range(BIG // len(_BLOCK)):
                self.wfile.write(_BLOCK)
            return
        if action == "redirect-abs":
            host = f"http://127.0.0.1:{self.server.server_port}"
            return self._send(302, b"", [("Location", f"{host}/apps/echoapp/target?x=1")])
        if action == "redirect-rel":
            return self._send(302, b"", [("Location", "/apps/echoapp/target?x=1")])
        if action == "redirect-ext":
            return self._send(302, b"", [("Location", "http://example.com/elsewhere")])
        if action == "redirect-schemeless":
            return self._send(302, b"", [("Location", "//example.com/elsewhere")])
        if action == "origin-wide":
            extra = [
                ("Service-Worker-Allowed", "/"),
                ("Clear-Site-Data", '"*"'),
                ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
                ("X-Frame-Options", "ALLOWALL"),
                ("Refresh", "0; url=http://evil.example/"),
                ("X-Keep", "1"),
            ]
            return self._send(200, b"{}", extra)
        if action == "refresh-own":
            return self._send(200, b"{}", [("Refresh", "5; url=/apps/echoapp/next")])
        if action == "cookies":
            cookies = [
                "app_echoapp_pref=1; Path=/",
                "sessionid=evil; Path=/",
                "csrftoken=evil; Path=/admin/",
                "app_echoapp_s=2; Path=/apps/echoapp/admin/; HttpOnly",
                "app_other_x=3; Path=/apps/other/",
                "appsup_env=env_dead; Path=/apps/echoapp/",
            ]
            return self._send(200, b"{}", [("Set-Cookie", c) for c in cookies])
        if action == "hop":
            extra = [
                ("Connection", "X-Drop-Me"),
                ("X-Drop-Me", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Authenticate", "Basic"),
                ("Trailer", "X-T"),
                ("Upgrade", "foo"),
                ("X-Keep", "1"),
            ]
            return self._send(200, b"{}", extra)
        if action == "htmlpage":
            return self._send(200, b"<html><body>" + b"x" * 10000 + b"</body></html>", ctype="text/html")
        echo = {
            "server": self.server.label,
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_length": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        self._send(200, json.dumps(echo).encode())

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle


def _echo_server(label: str) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    server.seen = []
    server.label = label
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _silent_server() -> tuple[socket.socket, list[socket.socket]]:
    """Accepts connections and never answers: a hung worker."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return listener, held


APPS = ("echoapp", "multi", "stoppedapp", "queuedapp", "deadapp", "offapp", "slowapp", "flipapp", "switchapp")
ENVS = ("env_echo", "env_echo2", "env_dead", "env_off", "env_slow")


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, tmp_path_factory):
    from django.db import connection

    from apps_registry.registry import actions

    echo, echo2 = _echo_server("echo"), _echo_server("echo2")
    silent, held = _silent_server()
    dead_port = free_port()
    now = dt.datetime.now(dt.UTC)
    with django_db_blocker.unblock():
        url = f"http://127.0.0.1:{echo.server_port}"
        env_echo = actions.register_environment(name="env_echo", url="http://127.0.0.1:1", proxy_url=url, at=now)
        env_echo2 = actions.register_environment(name="env_echo2", url=f"http://127.0.0.1:{echo2.server_port}", at=now)
        env_dead = actions.register_environment(name="env_dead", url=f"http://127.0.0.1:{dead_port}", at=now)
        env_off = actions.register_environment(
            name="env_off", url=url, at=now - dt.timedelta(hours=2)
        )  # reachable, but its agent has not been seen for two hours
        env_slow = actions.register_environment(
            name="env_slow", url=f"http://127.0.0.1:{silent.getsockname()[1]}", at=now
        )
        placements = {
            "echoapp": ([env_echo], "running"),
            "multi": ([env_echo, env_echo2, env_off], "running"),
            "stoppedapp": ([env_echo], "stopped"),
            "queuedapp": ([env_echo, env_echo2], "queued"),
            "deadapp": ([env_dead], "running"),
            "offapp": ([env_off], "running"),
            "slowapp": ([env_slow], "running"),
            "flipapp": ([env_echo], "running"),
            "switchapp": ([env_echo], "running"),
        }
        for name, (envs, status) in placements.items():
            actions.create_application(name=name, environments=envs, via="test")
            for env in envs:
                actions.record_app_status(name, env.name, status)
        db_name = connection.settings_dict["NAME"]

    port = free_port()
    env = {
        **services.supervisor_test_environ(),
        "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",
        "DB_DATABASE": db_name,
        # Long enough for a PBKDF2 login on a busy machine, short enough for the 504 test.
        "PROXY_READ_TIMEOUT": str(READ_TIMEOUT),
        "PROXY_CONNECT_TIMEOUT": "1",
        "PROXY_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
        "APP_LEASE_INTERVAL": "600",
        "APP_OFFLINE_AFTER": "1300",
        # The test client is not a trusted proxy of the supervisor: its X-Forwarded-* are ignored.
        "TRUSTED_PROXY_IPS": "192.0.2.1",
    }
    log_dir = tmp_path_factory.mktemp("proxy")
    supervisor = gunicorn("supervisor", port, env, log_dir, workers=1, threads=4).start()
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=30, message="supervisor up")
        yield {"port": port, "echo": echo, "echo2": echo2, "supervisor": supervisor, "held": held, "env": env}
    finally:
        supervisor.stop()
        log = supervisor.log()
        echo.shutdown()
        echo2.shutdown()
        silent.close()
        for conn in held:
            conn.close()
        with django_db_blocker.unblock():
            _forget(APPS, ENVS)
        assert "Traceback" not in log, log[-3000:]


def _forget(apps, envs) -> None:
    """Remove this module's registry rows and their config-cache entries (no commands sent)."""
    from apps_registry.control.discovery import get_discovery
    from apps_registry.models import Application, Environment

    Application.objects.filter(name__in=apps).delete()
    Environment.objects.filter(name__in=envs).delete()
    for name in apps:
        get_discovery().unpublish_app(name)
    for name in envs:
        get_discovery().unpublish_environment(name)


class Answer:
    def __init__(self, response: http.client.HTTPResponse, body: bytes):
        self.status = response.status
        self.headers = response.headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    @property
    def received(self) -> dict[str, str]:
        """The headers the echo upstream received, lower-cased names."""
        return {k.lower(): v for k, v in self.json()["headers"]}


def call(stack, method: str, path: str, headers: dict | None = None, body: bytes | None = None) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", stack["port"], timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Answer(response, response.read())
    finally:
        conn.close()


# --- routing ------------------------------------------------------------------------------


def test_single_environment_is_proxied_directly_to_its_proxy_url(stack):
    answer = call(stack, "GET", "/apps/echoapp/some/page?q=1&r=a%20b")
    assert answer.status == 200
    assert answer.json()["server"] == "echo"
    assert answer.json()["path"] == "/apps/echoapp/some/page?q=1&r=a%20b"
    assert answer.received["host"] == f"127.0.0.1:{stack['echo'].server_port}"
    assert call(stack, "GET", "/apps/echoapp").status == 302


def test_chooser_lists_environments_and_remembers_the_choice(stack):
    page = call(stack, "GET", "/apps/multi/x", {"Accept": "text/html"})
    assert page.status == 200 and b"env_echo2" in page.body and b"env_off" in page.body
    assert b'href="/apps/multi/x?env=env_echo2"' in page.body
    assert b"?env=env_off" not in page.body  # offline: listed, not offered
    listing = call(stack, "GET", "/apps/multi/x", {"Accept": "application/json"})
    assert listing.status == 300
    offered = {row["environment"]: row["choosable"] for row in listing.json()["choose"]}
    assert offered == {"env_echo": True, "env_echo2": True, "env_off": False}

    chosen = call(stack, "GET", "/apps/multi/x?a=1&env=env_echo2")
    assert chosen.status == 302 and chosen.headers["Location"] == "/apps/multi/x?a=1"
    cookie = chosen.headers["Set-Cookie"]
    assert cookie.startswith("appsup_env=env_echo2;") and "Path=/apps/multi/" in cookie and "HttpOnly" in cookie
    remembered = call(stack, "GET", "/apps/multi/x", {"Cookie": "appsup_env=env_echo2"})
    assert remembered.json()["server"] == "echo2"
    assert "appsup_env" not in remembered.received.get("cookie", "")
    # Changeable: ?env= shows the chooser again, ?env=<other> switches.
    assert b"(current)" in call(stack, "GET", "/apps/multi/x?env=", {"Cookie": "appsup_env=env_echo2"}).body
    posted = call(stack, "POST", "/apps/multi/x?env=env_echo", {"Cookie": "appsup_env=env_echo2"}, b"k=v")
    assert posted.json()["server"] == "echo" and posted.json()["path"] == "/apps/multi/x"
    assert posted.headers["Set-Cookie"].startswith("appsup_env=env_echo;")


@pytest.mark.parametrize(
    "query, cookie",
    [
        ("?env=env_off", ""),  # offline
        ("?env=env_dead", ""),  # another app's environment
        ("?env=http://evil.example/", ""),
        ("", "appsup_env=env_off"),
        ("", "appsup_env=env_dead"),
    ],
)
def test_only_the_apps_own_online_running_environments_can_be_chosen(stack, query, cookie):
    before = len(stack["echo"].seen) + len(stack["echo2"].seen)
    answer = call(stack, "GET", f"/apps/multi/x{query}", {"Cookie": cookie} if cookie else {})
    assert answer.status == 200 and b"Use env_echo" in answer.body
    assert len(stack["echo"].seen) + len(stack["echo2"].seen) == before


# --- errors -------------------------------------------------------------------------------


def test_unknown_app_is_404_in_html_and_json(stack):
    page = call(stack, "GET", "/apps/nosuch/admin/", {"Accept": "text/html"})
    assert page.status == 404 and b"no application named nosuch" in page.body
    data = call(stack, "GET", "/apps/nosuch/admin/", {"Accept": "application/json"})
    assert data.status == 404 and data.json()["app"] == "nosuch"


@pytest.mark.parametrize("app, status", [("stoppedapp", "stopped"), ("queuedapp", "queued")])
def test_app_not_running_is_503_with_status_and_retry_after(stack, app, status):
    data = call(stack, "GET", f"/apps/{app}/admin/", {"Accept": "application/json"})
    assert data.status == 503 and data.json()["app_status"] == status
    assert int(data.headers["Retry-After"]) > 0
    page = call(stack, "GET", f"/apps/{app}/admin/")
    assert page.status == 503 and status.encode() in page.body
    # A stopped app waits for an operator (so no reload); a queued one reloads itself.
    if status == "stopped":
        assert b"stopped by an operator" in page.body and b"http-equiv" not in page.body
    else:
        assert f'<meta http-equiv="refresh" content="{data.headers["Retry-After"]}">'.encode() in page.body


def test_a_status_change_is_seen_once_the_route_cache_expires(stack):
    assert call(stack, "GET", "/apps/flipapp/echo").status == 200
    # The change comes from another process, through the named action, as a worker's report would.
    code = "from apps_registry.registry import actions; actions.record_app_status('flipapp', 'env_echo', 'stopped')"
    result = manage(["shell", "-c", code], stack["env"])
    assert result.returncode == 0, result.stderr
    wait_until(
        lambda: call(stack, "GET", "/apps/flipapp/echo", {"Accept": "application/json"}).status == 503,
        timeout=3,  # PROXY_ROUTE_CACHE_SECONDS defaults to 1
        interval=0.1,
        message="stop seen through the route cache",
    )


def test_a_request_that_finds_its_app_held_out_of_its_route_waits_for_the_switch(stack):
    """A move flips ``serving`` on both sides in one UPDATE; should a request still find the app
    running but out of the route everywhere, it waits (re-reading the route) instead of failing."""
    import psycopg

    def serving(value: bool) -> None:
        # Committed at once on a connection of its own, as the move job's would be.
        with psycopg.connect(
            host=services.PG_HOST,
            port=services.PG_PORT,
            user=services.PG_USER,
            dbname=stack["env"]["DB_DATABASE"],
            autocommit=True,
        ) as conn:
            conn.execute(
                "UPDATE apps_registry_appenvironment SET serving = %s WHERE application_id ="
                " (SELECT id FROM apps_registry_application WHERE name = 'switchapp')",
                (value,),
            )

    assert call(stack, "GET", "/apps/switchapp/echo").status == 200
    serving(False)
    line = "proxy switchapp: held out of its route by a move"
    waits_before = stack["supervisor"].log().count(line)
    answers: list[tuple[int, float]] = []

    def visit() -> None:
        started = time.monotonic()
        answers.append((call(stack, "GET", "/apps/switchapp/echo").status, time.monotonic() - started))

    try:
        # Once the route cache no longer has it serving, a request waits; the switch lands meanwhile.
        give_up = time.monotonic() + 5.0  # the route cache (1 s) expires well before
        for _attempt in range(500):
            if time.monotonic() > give_up:
                break
            visitor = threading.Thread(target=visit)
            visitor.start()
            waiting = wait_until(
                lambda v=visitor: stack["supervisor"].log().count(line) > waits_before or not v.is_alive(),
                timeout=10,
                interval=0.02,
                message="a request waiting for the switch",
            )
            if visitor.is_alive() and waiting:
                break
            visitor.join(timeout=10)  # served from the route cache still: try again
        serving(True)
        visitor.join(timeout=10)
    finally:
        serving(True)
    assert stack["supervisor"].log().count(line) > waits_before, "no request waited for the switch"
    status, took = answers[-1]
    assert status == 200 and took < 3.0, answers  # served once switched, not refused


def test_dead_or_offline_environment_is_502_naming_it(stack):
    refused = call(stack, "POST", "/apps/deadapp/admin/", {"Accept": "application/json"}, b"a=1")
    assert refused.status == 502 and refused.json()["environments"] == ["env_dead"]
    assert b"env_dead" in call(stack, "GET", "/apps/deadapp/admin/").body
    offline = call(stack, "GET", "/apps/offapp/admin/", {"Accept": "application/json"})
    assert offline.status == 502 and "env_off" in offline.json()["detail"] and "offline" in offline.json()["detail"]


def test_hung_environment_is_504_after_the_read_timeout(stack):
    started = time.monotonic()
    answer = call(stack, "GET", "/apps/slowapp/admin/", {"Accept": "application/json"})
    elapsed = time.monotonic() - started
    assert answer.status == 504 and answer.json()["environments"] == ["env_slow"]
    assert READ_TIMEOUT - 0.1 < elapsed < READ_TIMEOUT + 4  # no retry of a request that timed out


# --- headers and cookies ------------------------------------------------------------------


def test_supervisor_credentials_and_hop_by_hop_headers_stay_behind(stack):
    headers = {
        "Cookie": "sessionid=sup; csrftoken=tok; appsup_env=env_echo; app_echoapp_sessionid=mine; app_other_s=no",
        "Authorization": "Bearer secret",
        "Connection": "X-Secret",
        "X-Secret": "1",
        "Keep-Alive": "300",
        "TE": "trailers",
        "Trailer": "X-Whatever",
        "Proxy-Authorization": "Basic eA==",
        "Upgrade": "h2c",
        "Expect": "100-continue",
        "X-App-Thing": "kept",
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Host": "evil.example",
        # The proxy's own word to the worker (the app is at "/" of its host): never a client's.
        "X-Forwarded-App-Root": "/",
        "Host": "sup.example:8443",
    }
    received = call(stack, "GET", "/apps/echoapp/echo", headers).received
    assert received["cookie"] == "app_echoapp_sessionid=mine"
    for name in (
        "authorization",
        "x-secret",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "upgrade",
        "expect",
        "x-forwarded-app-root",
    ):
        assert name not in received, name
    assert received["x-app-thing"] == "kept"
    assert received["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert received["x-forwarded-host"] == "sup.example:8443"
    assert received["x-forwarded-proto"] == "http"
    assert received["host"] == f"127.0.0.1:{stack['echo'].server_port}"
    assert "cookie" not in call(stack, "GET", "/apps/echoapp/echo", {"Cookie": "sessionid=sup"}).received


def test_response_cookies_limited_to_the_app_and_its_path(stack):
    answer = call(stack, "GET", "/apps/echoapp/cookies")
    cookies = {c.split("=", 1)[0]: c for c in answer.headers.get_all("Set-Cookie")}
    assert set(cookies) == {"app_echoapp_pref", "app_echoapp_s"}
    assert "Path=/apps/echoapp/;" in cookies["app_echoapp_pref"] + ";"
    assert "Path=/apps/echoapp/admin/" in cookies["app_echoapp_s"] and "HttpOnly" in cookies["app_echoapp_s"]


def test_hop_by_hop_response_headers_dropped(stack):
    answer = call(stack, "GET", "/apps/echoapp/hop")
    names = {k.lower() for k in answer.headers}
    assert "x-keep" in names
    assert not names & {"x-drop-me", "keep-alive", "proxy-authenticate", "trailer", "upgrade"}


def test_redirects_absolute_to_the_worker_rewritten_relative_unchanged(stack):
    absolute = call(stack, "GET", "/apps/echoapp/redirect-abs", {"Host": "sup.example:8443"})
    assert absolute.status == 302 and absolute.headers["Location"] == "http://sup.example:8443/apps/echoapp/target?x=1"
    relative = call(stack, "GET", "/apps/echoapp/redirect-rel")
    assert relative.headers["Location"] == "/apps/echoapp/target?x=1"
    for foreign in ("/apps/echoapp/redirect-ext", "/apps/echoapp/redirect-schemeless"):
        refused = call(stack, "GET", foreign)
        assert refused.status == 502 and "Location" not in refused.headers
        assert b"another site" in refused.body


def test_headers_acting_on_the_whole_origin_never_reach_the_browser(stack):
    answer = call(stack, "GET", "/apps/echoapp/origin-wide")
    names = {k.lower() for k in answer.headers}
    assert answer.status == 200 and "x-keep" in names
    assert not names & {"service-worker-allowed", "clear-site-data", "strict-transport-security", "refresh"}
    assert answer.headers["X-Frame-Options"] == "DENY"  # the supervisor's own framing policy
    own = call(stack, "GET", "/apps/echoapp/refresh-own")
    assert own.headers["Refresh"] == "5; url=/apps/echoapp/next"


# --- bodies -------------------------------------------------------------------------------


def test_upload_streams_through_and_oversize_is_413(stack):
    body = bytes(range(256)) * (3 * 4096)  # 3 MiB, over Django's default in-memory limit
    answer = call(stack, "POST", "/apps/echoapp/upload", {"Content-Type": "application/octet-stream"}, body)
    assert answer.status == 200
    assert answer.json()["body_length"] == len(body)
    assert answer.json()["body_sha256"] == hashlib.sha256(body).hexdigest()

    chunks = [b"a" * 5000, b"b" * 7000]
    conn = http.client.HTTPConnection("127.0.0.1", stack["port"], timeout=10)
    conn.request("POST", "/apps/echoapp/upload", body=iter(chunks), encode_chunked=True)
    chunked = json.loads(conn.getresponse().read())
    conn.close()
    assert chunked["body_length"] == 12000 and chunked["body_sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()

    before = len(stack["echo"].seen)
    conn = http.client.HTTPConnection("127.0.0.1", stack["port"], timeout=10)
    conn.putrequest("POST", "/apps/echoapp/upload")
    conn.putheader("Content-Length", str(UPLOAD_LIMIT + 1))
    conn.putheader("Accept", "application/json")
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and json.loads(response.read())["limit_bytes"] == UPLOAD_LIMIT
    conn.close()
    assert len(stack["echo"].seen) == before


def _worker_pid(master_pid: int) -> int:
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    return int(children[0])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_large_download_streams_without_growing_the_supervisor(stack):
    pid = _worker_pid(stack["supervisor"].pid)
    call(stack, "GET", "/apps/echoapp/echo")  # warm the code path
    baseline = _rss_kib(pid)
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_kib(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    conn = http.client.HTTPConnection("127.0.0.1", stack["port"], timeout=30)
    conn.request("GET", "/apps/echoapp/big")
    response = conn.getresponse()
    digest, total = hashlib.sha256(), 0
    while chunk := response.read(256 * 1024):
        digest.update(chunk)
        total += len(chunk)
    conn.close()
    done.set()
    sampler.join()
    assert response.status == 200 and int(response.headers["Content-Length"]) == BIG
    assert total == BIG
    assert digest.hexdigest() == hashlib.sha256(_BLOCK * (BIG // len(_BLOCK))).hexdigest()
    grown_mib = (peak[0] - baseline) / 1024
    print(
        f"supervisor worker RSS: baseline {baseline / 1024:.1f} MiB, growth during 50 MiB download {grown_mib:.1f} MiB"
    )
    assert grown_mib < 8


# --- traversal and SSRF --------------------------------------------------------------------

REFUSED = [
    "/apps/echoapp/../admin/",
    "/apps/echoapp/./echo",
    "/apps/echoapp/%2e%2e/admin/",
    "/apps/echoapp/.%2E/admin/",
    "/apps/echoapp/a%2fb",
    "/apps/echoapp/a%5cb",
    "/apps/echoapp/%252e%252e/admin/",
    "/apps/echoapp//echo",
    "/apps/echoapp/a/..",
    "/apps/../admin/",
    "/apps/Echoapp/",
    "/apps/echo-app/",
    "/apps/echoapp%2fx/",
    "/apps/%65choapp/echo/%2e%2e",
    "/apps/",
    "/apps",
]


@pytest.mark.parametrize("path", REFUSED)
def test_traversal_and_bad_names_refused_before_any_worker(stack, path):
    before = list(stack["echo"].seen)
    assert call(stack, "GET", path).status == 404
    assert stack["echo"].seen == before


_SEGMENT = st.text(alphabet="aeo.%/2fFE5c\\_-~:@;=+", min_size=0, max_size=14)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(alphabet="abcehopxyz_.-/%2eE09", min_size=0, max_size=10), rest=_SEGMENT)
def test_fuzzed_names_never_reach_a_worker(stack, name, rest):
    seen = stack["echo"].seen
    before = len(seen)
    status = call(stack, "GET", f"/apps/{name}/{rest}").status
    if name != "echoapp":
        assert seen[before:] == [] and status in (302, 400, 404)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rest=_SEGMENT)
def test_fuzzed_paths_reach_a_worker_only_normalised_under_the_app(stack, rest):
    seen = stack["echo"].seen
    before = len(seen)
    call(stack, "GET", f"/apps/echoapp/{rest}")
    for path in seen[before:]:
        route = path.split("?", 1)[0]
        assert route.startswith("/apps/echoapp/")
        segments = route[len("/apps/echoapp/") :].split("/")
        assert not any(s in (".", "..") for s in segments)
        assert not any(s == "" for s in segments[:-1])
        assert "%2f" not in route.lower() and "%2e" not in route.lower() and "\\" not in route


# --- a real hosted app on a real worker, through the proxy --------------------------------

HOSTED = "px_crm"


class Browser:
    """Keeps cookies by path, follows no redirects, sends Origin like a browser's form post."""

    def __init__(self, port: int):
        self.port = port
        self.cookies: dict[str, tuple[str, str]] = {}

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        headers = {"Accept": "text/html", **(headers or {})}
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
        return response.status, response.headers, data

    def csrf(self, path: str) -> str:
        status, _, html = self.request("GET", path)
        assert status == 200, (path, status)
        return re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1).decode()

    def post_form(self, path: str, fields: dict[str, str], files: dict[str, tuple[str, bytes]] | None = None):
        boundary = secrets.token_hex(12)
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in fields.items()
        ]
        for name, (filename, content) in (files or {}).items():
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            )
            parts.append(head.encode() + content + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers = {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Origin": f"http://127.0.0.1:{self.port}",
        }
        return self.request("POST", path, body, headers)


@pytest.fixture(scope="module")
def hosted(stack, django_db_blocker, tmp_path_factory):
    """A worker gunicorn (threads) hosting px_crm via ``manage.py host_app``, registered as env_px."""
    from apps_registry.registry import actions

    storage = tmp_path_factory.mktemp("env_px")
    port = free_port()
    db = f"{services.RUN_ID}_worker_px"
    with psycopg.connect(
        host=services.PG_HOST, port=services.PG_PORT, user=services.PG_USER, dbname="postgres", autocommit=True
    ) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
            conn.execute(f'CREATE DATABASE "{db}"')
    env = {
        **services.supervisor_test_environ(),
        "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",
        "APP_MODE": "worker",
        "APP_PROCESS_ADAPTER": "local",
        "DB_DATABASE": db,
        "ENVIRONMENT_NAME": "env_px",
        "ENVIRONMENT_URL": f"http://127.0.0.1:{port}",
        "APP_STORAGE_DIR": str(storage),
    }
    start = manage(
        ["host_app", HOSTED, "--modules", "contacts,tasks", "--admin-user", "alice", "--admin-password", "pw"], env
    )
    assert start.returncode == 0, start.stderr
    web = gunicorn("worker_px", port, env, storage, workers=1, threads=4).start()
    with django_db_blocker.unblock():
        env_px = actions.register_environment(name="env_px", url=f"http://127.0.0.1:{port}")
        actions.create_application(name=HOSTED, environments=[env_px], via="test")
        actions.record_app_status(HOSTED, "env_px", "running")
    try:
        wait_until(lambda: Browser(port).request("GET", f"/apps/{HOSTED}/")[0] == 302, timeout=30, message="worker")
        yield {"port": port, "web": web, "env": env, "storage": storage}
    finally:
        web.stop()
        with django_db_blocker.unblock():
            _forget([HOSTED], ["env_px"])
        assert "Traceback" not in web.log(), web.log()[-3000:]


def _journey(browser: Browser, contact: str) -> list:
    """Login with CSRF, a form save with an upload, the list, the download: what a person does."""
    app = f"/apps/{HOSTED}"
    seen = []
    status, headers, _ = browser.request("GET", f"{app}/")
    seen.append((status, headers["Location"]))
    status, headers, _ = browser.request("GET", f"{app}/admin/")
    seen.append((status, headers["Location"]))
    login = f"{app}/admin/login/"
    fields = {
        "csrfmiddlewaretoken": browser.csrf(login),
        "username": "alice",
        "password": "pw",
        "next": f"{app}/admin/",
    }
    status, headers, _ = browser.post_form(f"{login}?next={app}/admin/", fields)
    assert status == 302, status
    seen.append((status, headers["Location"]))
    assert set(browser.cookies) == {f"app_{HOSTED}_sessionid"}
    assert browser.cookies[f"app_{HOSTED}_sessionid"][1] == f"{app}/"

    add = f"{app}/admin/contacts/contact/add/"
    fields = {"csrfmiddlewaretoken": browser.csrf(add), "name": contact, "company": "Engines", "email": ""}
    fields.update(phone="", notes="", _save="Save")
    attachment = f"{contact.split()[0].lower()}.txt"
    status, headers, body = browser.post_form(add, fields, {"attachment": (attachment, b"analytical\n" * 1000)})
    assert status == 302, body[:3000]
    seen.append((status, headers["Location"]))
    status, _, body = browser.request("GET", headers["Location"])
    assert status == 200 and contact.encode() in body and b"was added successfully" in body
    assert b"/static/admin/css/base.css" in body
    status, headers, body = browser.request("GET", f"{app}/files/contacts/{attachment}")
    assert status == 200 and body == b"analytical\n" * 1000 and "attachment" in headers["Content-Disposition"]
    seen.append(status)
    return seen


def test_hosted_app_behaves_the_same_through_the_proxy_as_direct(stack, hosted):
    direct = _journey(Browser(hosted["port"]), "Ada Lovelace")
    proxied = _journey(Browser(stack["port"]), "Grace Hopper")
    assert proxied == direct
    assert call(stack, "GET", "/static/admin/css/base.css").status == 200  # the app's static files


def test_stopped_worker_is_502_naming_its_environment(stack, hosted):
    hosted["web"].stop()
    try:
        answer = call(stack, "GET", f"/apps/{HOSTED}/admin/", {"Accept": "application/json"})
        assert answer.status == 502 and answer.json()["environments"] == ["env_px"]
        assert b"env_px" in call(stack, "GET", f"/apps/{HOSTED}/admin/").body
    finally:
        # The same Process again, so that the fixture's clean-up stops the gunicorn started here.
        hosted["web"].start()
        wait_until(lambda: http_ok(f"http://127.0.0.1:{hosted['port']}/healthz"), timeout=30, message="worker back")


# --- the worker's trust in forwarded headers (in-process) ---------------------------------


@pytest.mark.parametrize(
    "peer, trusted, expect_host, expect_scheme, expect_addr",
    [
        ("127.0.0.1", True, "sup.example", "https", "198.51.100.7"),
        ("203.0.113.5", False, "worker.internal", "http", "203.0.113.5"),
    ],
)
def test_forwarded_headers_believed_only_from_trusted_proxies(peer, trusted, expect_host, expect_scheme, expect_addr):
    from django.test import RequestFactory

    from supervisor_site.forwarded import ForwardedHeadersMiddleware

    seen = {}

    def view(request):
        seen.update(host=request.get_host(), scheme=request.scheme, addr=request.META["REMOTE_ADDR"])
        return None

    request = RequestFactory().get(
        "/apps/x/",
        REMOTE_ADDR=peer,
        HTTP_HOST="worker.internal",
        HTTP_X_FORWARDED_HOST="sup.example",
        HTTP_X_FORWARDED_PROTO="https",
        # A client wrote the first address; the trusted proxy appended the real one.
        HTTP_X_FORWARDED_FOR="10.9.9.9, 198.51.100.7",
    )
    ForwardedHeadersMiddleware(view)(request)
    assert seen == {"host": expect_host, "scheme": expect_scheme, "addr": expect_addr}


# --- the admin's Visit links --------------------------------------------------------------


def test_application_list_has_one_visit_link_the_chooser_when_several(admin_client):
    from apps_registry.registry import actions

    one = actions.register_environment(name="env_l1", url="http://127.0.0.1:9")
    two = actions.register_environment(name="env_l2", url="http://127.0.0.1:10")
    actions.create_application(name="px_single", environments=[one], via="test")
    actions.create_application(name="px_double", environments=[one, two], via="test")
    html = admin_client.get("/admin/apps_registry/application/").content.decode()
    assert 'href="/apps/px_single/admin/"' in html
    # One Visit: with two environments, the proxy's chooser (?env= empty) picks one.
    assert 'href="/apps/px_double/admin/?env="' in html and "?env=env_l1" not in html


def test_trusted_proxy_addresses_are_validated_at_start_up(tmp_path):
    from supervisor_site.config import ConfigError, load

    config = load({"DEBUG": "true", "TRUSTED_PROXY_IPS": "10.0.0.0/8, 127.0.0.1"}, tmp_path)
    assert config.trusted_proxies == ["10.0.0.0/8", "127.0.0.1/32"]
    with pytest.raises(ConfigError, match="TRUSTED_PROXY_IPS"):
        load({"DEBUG": "true", "TRUSTED_PROXY_IPS": "10.0.0.0/8, proxy.example"}, tmp_path)
