"""Per-app origins and custom domains, against real processes: a supervisor gunicorn with
``APPS_DOMAIN=apps.localhost`` and a worker gunicorn hosting ``sales_eu`` (custom domain
``sales.example.test``), PostgreSQL and Redis; then headless Chromium for the cookies.

Python's resolver does not map ``*.localhost`` to loopback (toolchain facts), so the HTTP
tests connect to 127.0.0.1 and send the ``Host`` header; Chromium resolves ``*.localhost``
itself, and is told where ``sales.example.test`` is with ``--host-resolver-rules``.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import re
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.support import services
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, in_a_browser_thread
from tests.support.processes import free_port, gunicorn, http_ok, manage, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.django_db]

APP = "sales_eu"
DUO = "duo"  # on two environments: the chooser
LABEL_HOST = "sales-eu.apps.localhost"
DOMAIN = "sales.example.test"
APP_USER, APP_PASSWORD = "alice", "alice-app-pass"
OPERATOR, OPERATOR_PASSWORD = "origins_operator", "origins-operator-pass"


def _database(name: str) -> None:
    with psycopg.connect(
        host=services.PG_HOST, port=services.PG_PORT, user=services.PG_USER, dbname="postgres", autocommit=True
    ) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


@pytest.fixture(scope="module")
def origins(django_db_setup, django_db_blocker, tmp_path_factory):
    """The worker (``host_app``, no agent) registered as env_origins; the supervisor on the
    test database with APPS_DOMAIN, and an operator of its own admin."""
    from django.db import connection

    from apps_registry.models import Application, AuditEntry, Environment
    from apps_registry.registry import actions

    with django_db_blocker.unblock():
        known = set(Environment.objects.values_list("name", flat=True))
        last_entry = AuditEntry.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    storage = tmp_path_factory.mktemp("env_origins")
    worker_port = free_port()
    worker_db = f"{services.RUN_ID}_worker_origins"
    _database(worker_db)
    worker_env = {
        **services.supervisor_test_environ(),
        "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",
        "APP_MODE": "worker",
        "APP_PROCESS_ADAPTER": "local",
        "DB_DATABASE": worker_db,
        "ENVIRONMENT_NAME": "env_origins",
        "ENVIRONMENT_URL": f"http://127.0.0.1:{worker_port}",
        "APP_STORAGE_DIR": str(storage),
    }
    hosted = manage(
        ["host_app", APP, "--modules", "contacts", "--admin-user", APP_USER, "--admin-password", APP_PASSWORD],
        worker_env,
    )
    assert hosted.returncode == 0, hosted.stderr
    hosted = manage(["host_app", DUO, "--admin-user", APP_USER, "--admin-password", APP_PASSWORD], worker_env)
    assert hosted.returncode == 0, hosted.stderr
    worker = gunicorn("worker_origins", worker_port, worker_env, storage, workers=1, threads=4).start()

    with django_db_blocker.unblock():
        env = actions.register_environment(
            name="env_origins", url=f"http://127.0.0.1:{worker_port}", at=dt.datetime.now(dt.UTC)
        )
        actions.create_application(name=APP, environments=[env], domain=DOMAIN, via="test")
        actions.record_app_status(APP, "env_origins", "running")
        # A second environment record for the same worker: DUO can be served by either.
        env2 = actions.register_environment(
            name="env_origins2", url=f"http://127.0.0.1:{worker_port}", at=dt.datetime.now(dt.UTC)
        )
        actions.create_application(name=DUO, environments=[env, env2], via="test")
        for name in ("env_origins", "env_origins2"):
            actions.record_app_status(DUO, name, "running")
        db_name = connection.settings_dict["NAME"]

    port = free_port()
    supervisor_env = {
        **services.supervisor_test_environ(),
        "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",
        "DB_DATABASE": db_name,
        "APPS_DOMAIN": "apps.localhost",
        "ALLOWED_HOSTS": "localhost,127.0.0.1",
        "APP_LEASE_INTERVAL": "600",
        "APP_OFFLINE_AFTER": "1300",
        "PROXY_ROUTE_CACHE_SECONDS": "0",
        # This test's client is not a trusted proxy of the supervisor.
        "TRUSTED_PROXY_IPS": "192.0.2.1",
    }
    created = manage(
        ["createsuperuser", "--no-input", "--username", OPERATOR, "--email", "op@example.com"],
        {**supervisor_env, "DJANGO_SUPERUSER_PASSWORD": OPERATOR_PASSWORD},
    )
    assert created.returncode == 0 or "already taken" in created.stderr, created.stderr
    log_dir = tmp_path_factory.mktemp("origins")
    supervisor = gunicorn("supervisor_origins", port, supervisor_env, log_dir, workers=1, threads=4).start()
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=30, message="supervisor up")
        wait_until(
            lambda: Client(port, LABEL_HOST).request("GET", "/")[0] == 302, timeout=30, message="app via its host"
        )
        yield {"port": port, "worker": worker, "supervisor": supervisor}
    finally:
        supervisor.stop()
        worker.stop()
        with django_db_blocker.unblock():
            from apps_registry.control.discovery import get_discovery

            Application.objects.filter(name__in=[APP, DUO]).delete()
            Environment.objects.filter(name__in=["env_origins", "env_origins2"]).delete()
            # This supervisor shares Redis with the session cluster: the admin's index (it
            # applies worker events) registers env_a and env_b in the test database from the
            # cluster's heartbeats, committed, with audit entries: they go with it.
            Environment.objects.exclude(name__in=known).delete()
            AuditEntry.objects.filter(pk__gt=last_entry).delete()
            for name in (APP, DUO):
                get_discovery().unpublish_app(name)
            for name in ("env_origins", "env_origins2"):
                get_discovery().unpublish_environment(name)
        for process in (supervisor, worker):
            assert "Traceback" not in process.log(), process.log()[-3000:]


class Client:
    """A browser on one host name: keeps that host's cookies by path, sends Origin on POST."""

    def __init__(self, port: int, host: str):
        self.port = port
        self.host = host if ":" in host else f"{host}:{port}"
        self.cookies: dict[str, tuple[str, str, str]] = {}  # name -> (value, path, domain)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        headers = {"Host": self.host, "Accept": "text/html", **(headers or {})}
        sent = [f"{n}={v}" for n, (v, p, _d) in self.cookies.items() if path.startswith(p)]
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
                    self.cookies[name] = (morsel.value, morsel["path"] or "/", morsel["domain"])
        return response.status, response.headers, data

    def login(self, path: str, username: str, password: str, next_url: str):
        status, _, html = self.request("GET", path)
        assert status == 200, (self.host, path, status)
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1).decode()
        body = f"csrfmiddlewaretoken={token}&username={username}&password={password}&next={next_url}".encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": f"http://{self.host}"}
        return self.request("POST", path, body, headers)


def _root_links(html: bytes) -> list[str]:
    return [m.decode() for m in re.findall(rb'(?:href|action)="(/[^"]*)"', html)]


def _app_journey(client: Client) -> None:
    """The app's admin at /admin/ of this host: redirects, login page, log in, the index."""
    status, headers, _ = client.request("GET", "/")
    assert (status, headers["Location"]) == (302, "/admin/")
    status, headers, _ = client.request("GET", "/admin/")
    assert (status, headers["Location"]) == (302, "/admin/login/?next=/admin/")
    status, _, html = client.request("GET", "/admin/login/?next=/admin/")
    assert status == 200 and b'name="csrfmiddlewaretoken"' in html
    assert b"/apps/" not in html, "links are /-rooted on the app's own host"
    assert 'action="/admin/login/' in html.decode()

    status, headers, body = client.login("/admin/login/?next=/admin/", APP_USER, APP_PASSWORD, "/admin/")
    assert status == 302, body[:2000]
    assert headers["Location"] == "/admin/"
    assert set(client.cookies) == {f"app_{APP}_sessionid"}
    _value, path, domain = client.cookies[f"app_{APP}_sessionid"]
    assert (path, domain) == ("/", ""), "the session cookie is the host's alone, for the whole host"

    status, _, html = client.request("GET", "/admin/")
    assert status == 200 and APP_USER.encode() in html
    links = _root_links(html)
    assert "/admin/contacts/contact/" in links and "/admin/logout/" in "".join(links)
    assert not [link for link in links if link.startswith("/apps/")], links
    status, _, html = client.request("GET", "/admin/contacts/contact/add/")
    assert status == 200 and b"/apps/" not in html
    status, _, css = client.request("GET", "/static/admin/css/base.css")
    assert status == 200 and css


def test_app_host_under_apps_domain_serves_its_admin_at_the_root(origins):
    _app_journey(Client(origins["port"], LABEL_HOST))


def test_custom_domain_serves_the_app_at_the_root(origins):
    _app_journey(Client(origins["port"], DOMAIN))


def test_supervisor_admin_and_api_are_not_served_on_app_hosts(origins):
    port = origins["port"]
    supervisor = Client(port, "127.0.0.1")
    status, _, html = supervisor.request("GET", "/admin/login/")
    assert status == 200 and b"App Supervisor" in html
    for host in (LABEL_HOST, DOMAIN):
        app = Client(port, host)
        status, _, html = app.request("GET", "/admin/login/")
        assert status == 200 and b"App Supervisor" not in html  # the app's own admin
        for path in ("/api/v1/apps", "/api/v1/openapi.json", "/admin/apps_registry/application/", "/healthz"):
            status, _, body = app.request("GET", path, headers={"Accept": "application/json"})
            assert status in (302, 404), (host, path, status)
            assert b"apps_registry" not in body and b"openapi" not in body
        # The supervisor's own session, sent by hand to an app host, does not reach the worker.
        status, _, _ = app.request("GET", "/admin/", headers={"Cookie": "sessionid=x; csrftoken=y"})
        assert status == 302
    for host in ("apps.localhost", "nope.apps.localhost", "a.sales-eu.apps.localhost"):
        status, _, body = Client(port, host).request("GET", "/admin/", headers={"Accept": "application/json"})
        assert status == 404, (host, status, body[:300])
        assert json.loads(body)["error"] == "Application not found"
    # Not a host name at all (labels hold no "_"): Django's own 400, as anywhere.
    assert Client(port, "sales_eu.apps.localhost").request("GET", "/admin/")[0] == 400


def test_the_environment_chooser_works_per_host(origins):
    client = Client(origins["port"], f"{DUO}.apps.localhost")
    status, _, html = client.request("GET", "/admin/")
    assert status == 200, html[:500]
    assert b'href="/admin/?env=env_origins2"' in html and b'href="/admin/?env=env_origins"' in html
    status, headers, _ = client.request("GET", "/admin/?env=env_origins2")
    assert (status, headers["Location"]) == (302, "/admin/")
    assert client.cookies["appsup_env"] == ("env_origins2", "/", ""), "remembered for this host only"
    status, headers, _ = client.request("GET", "/admin/")
    assert (status, headers["Location"]) == (302, "/admin/login/?next=/admin/")


def test_path_mode_leads_to_the_apps_own_host(origins):
    port = origins["port"]
    status, headers, _ = Client(port, "127.0.0.1").request("GET", f"/apps/{APP}/admin/login/?next=/x")
    assert status == 307
    assert headers["Location"] == f"http://{LABEL_HOST}:{port}/admin/login/?next=/x"


def test_unknown_host_is_refused_and_domain_check_answers_for_app_hosts_only(origins):
    port = origins["port"]
    status, _, _ = Client(port, "elsewhere.example.test").request("GET", "/admin/")
    assert status == 400  # Django's DisallowedHost: no app has it, nor does ALLOWED_HOSTS
    supervisor = Client(port, "127.0.0.1")
    answers = {
        domain: supervisor.request("GET", f"/internal/domain-check?domain={domain}")[0]
        for domain in (DOMAIN, LABEL_HOST, "SALES.example.test", "other.example.test", "nope.apps.localhost", "")
    }
    assert answers == {
        DOMAIN: 200,
        LABEL_HOST: 200,
        "SALES.example.test": 200,
        "other.example.test": 404,
        "nope.apps.localhost": 404,
        "": 400,
    }
    assert supervisor.request("GET", "/internal/domain-check?domain=a_b..x")[0] == 400
    # Not on an app host: there the path is the app's.
    assert Client(port, LABEL_HOST).request("GET", f"/internal/domain-check?domain={DOMAIN}")[0] == 404


# --- in a real browser ---------------------------------------------------------------------


def test_in_chromium_the_supervisors_cookies_never_reach_app_hosts(origins):
    if not CHROMIUM.exists():
        pytest.fail(f"no browser: {CHROMIUM} is missing (scripts/test.sh installs Debian's chromium)", False)
    in_a_browser_thread(_cookie_story, origins["port"])


def _cookie_story(port: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        args = [*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {DOMAIN} 127.0.0.1"]
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            _cookie_checks(browser, port)
        finally:
            browser.close()


def _cookie_checks(browser, port: int) -> None:
    supervisor = f"http://localhost:{port}"
    context = browser.new_context()
    context.set_default_timeout(30_000)
    page = context.new_page()
    sent: list[tuple[str, str]] = []  # (host, Cookie header) of every request the page made
    page.on(
        "request", lambda request: sent.append((urlsplit(request.url).netloc, request.all_headers().get("cookie", "")))
    )

    # Log in to the supervisor's admin at localhost: its session cookie is set there.
    page.goto(f"{supervisor}/admin/")
    page.fill("#id_username", OPERATOR)
    page.fill("#id_password", OPERATOR_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#user-tools")
    supervisor_cookies = {c["name"]: c for c in context.cookies(f"{supervisor}/admin/")}
    assert "sessionid" in supervisor_cookies
    assert supervisor_cookies["sessionid"]["domain"] == "localhost"  # host-only, not .localhost

    # The app on its own hosts: a sub-domain of localhost, and its custom domain.
    for host in (f"{LABEL_HOST}:{port}", f"{DOMAIN}:{port}"):
        sent.clear()
        page.goto(f"http://{host}/admin/")
        page.wait_for_selector("#id_username")
        assert page.url == f"http://{host}/admin/login/?next=/admin/"
        to_app = [cookie for netloc, cookie in sent if netloc == host]
        assert to_app, sent
        assert not [c for c in to_app if "sessionid=" in c and f"app_{APP}_sessionid" not in c], to_app
        assert "sessionid" not in page.evaluate("document.cookie")
        assert not {c["name"] for c in context.cookies(f"http://{host}/admin/")} & {"sessionid", "csrftoken"}

    # Log in to the app on its host: its cookie stays on that host, never sent to the supervisor.
    page.goto(f"http://{LABEL_HOST}:{port}/admin/")
    page.fill("#id_username", APP_USER)
    page.fill("#id_password", APP_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#user-tools")
    assert page.url == f"http://{LABEL_HOST}:{port}/admin/"
    app_cookie = next(c for c in context.cookies(f"http://{LABEL_HOST}:{port}/") if c["name"] == f"app_{APP}_sessionid")
    assert (app_cookie["domain"], app_cookie["path"]) == (LABEL_HOST, "/")
    sent.clear()
    page.goto(f"{supervisor}/admin/")
    page.wait_for_selector("#user-tools")
    assert sent and not [c for _n, c in sent if f"app_{APP}_sessionid" in c], sent
    context.close()
