"""A hostile page served by a (compromised) worker, in headless Chromium, with an operator
signed in to the supervisor: it cannot create a supervisor user, and cannot register a service
worker beyond its app (tests/support/hostile.py is the attack).

Two supervisors on one registry: one with ``APPS_DOMAIN=apps.localhost`` (each app on its own
origin, what ``make run`` uses) and one in path mode (``/apps/<name>/`` on the supervisor's own
origin, the seed document's deployments). On the first, the page runs at
``evil.apps.localhost``, another origin: the supervisor's forms cannot be read or posted. On the
second, the page shares the supervisor's origin (docs/security.md says what that leaves open);
what must still hold is that its service worker cannot take the origin's scope ``/``, since the
proxy drops the worker's ``Service-Worker-Allowed``.
"""

from __future__ import annotations

import datetime as dt

import pytest

from tests.support import services
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, in_a_browser_thread
from tests.support.hostile import INTRUDER
from tests.support.processes import PYTHON, Process, free_port, gunicorn, http_ok, manage, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.django_db]

APP = "evil"
OPERATOR, PASSWORD = "hostile_operator", "hostile-operator-pass"


@pytest.fixture(scope="module")
def supervisors(django_db_setup, django_db_blocker, tmp_path_factory):
    from django.db import connection

    from apps_registry.control.discovery import get_discovery
    from apps_registry.models import Application, AuditEntry, Environment
    from apps_registry.registry import actions

    log_dir = tmp_path_factory.mktemp("hostile")
    with django_db_blocker.unblock():
        known = set(Environment.objects.values_list("name", flat=True))
        last_entry = AuditEntry.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    upstream_port = free_port()
    command = [PYTHON, "-m", "tests.support.hostile", "--port", str(upstream_port)]
    upstream = Process("hostile-worker", command, {}, log_dir)
    upstream.start()
    started: list[Process] = [upstream]
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{upstream_port}/apps/{APP}/x"), timeout=20, message="hostile")
        with django_db_blocker.unblock():
            env = actions.register_environment(
                name="env_hostile", url=f"http://127.0.0.1:{upstream_port}", at=dt.datetime.now(dt.UTC)
            )
            actions.create_application(name=APP, environments=[env], via="test")
            actions.record_app_status(APP, "env_hostile", "running")
            db_name = connection.settings_dict["NAME"]
        common = {
            **services.supervisor_test_environ(),
            "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",
            "DB_DATABASE": db_name,
            "ALLOWED_HOSTS": "localhost,127.0.0.1",
            # The registry keeps the stand-in online: what is tested is the browser's side.
            "APP_LEASE_INTERVAL": "600",
            "APP_OFFLINE_AFTER": "1300",
            "PROXY_ROUTE_CACHE_SECONDS": "0",
        }
        created = manage(
            ["createsuperuser", "--no-input", "--username", OPERATOR, "--email", "op@example.com"],
            {**common, "DJANGO_SUPERUSER_PASSWORD": PASSWORD},
        )
        assert created.returncode == 0 or "already taken" in created.stderr, created.stderr
        ports = {"hosts": free_port(), "paths": free_port()}
        for mode, port in ports.items():
            env = {**common, "APPS_DOMAIN": "apps.localhost"} if mode == "hosts" else common
            started.append(gunicorn(f"supervisor-{mode}", port, env, log_dir, workers=1, threads=4).start())
        for port in ports.values():
            wait_until(lambda port=port: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=30, message="up")
        yield ports
    finally:
        for process in started:
            process.stop()
        with django_db_blocker.unblock():
            Application.objects.filter(name=APP).delete()
            Environment.objects.filter(name="env_hostile").delete()
            # These supervisors share Redis with the session cluster: a page that applies worker
            # events (the admin's index, its lists) registers env_a and env_b in the test
            # database from the cluster's heartbeats, committed, with audit entries: they go with the supervisors.
            Environment.objects.exclude(name__in=known).delete()
            AuditEntry.objects.filter(pk__gt=last_entry).delete()
            get_discovery().unpublish_app(APP)
            get_discovery().unpublish_environment("env_hostile")


def _attack(ports: dict) -> dict:
    from playwright.sync_api import sync_playwright

    results: dict = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            for mode, port in ports.items():
                supervisor = f"http://localhost:{port}"
                context = browser.new_context()
                context.set_default_timeout(30_000)
                page = context.new_page()
                if mode == "hosts":
                    # Path mode is not signed in: there the page shares the supervisor's origin,
                    # which no header can fence off (docs/security.md, "Per-app origins").
                    page.goto(f"{supervisor}/admin/login/")
                    page.fill("input[name=username]", OPERATOR)
                    page.fill("input[name=password]", PASSWORD)
                    page.click("input[type=submit]")
                    page.wait_for_url(f"{supervisor}/admin/")
                app = f"http://{APP}.apps.localhost:{port}" if mode == "hosts" else f"{supervisor}/apps/{APP}"
                page.goto(f"{app}/page?supervisor={supervisor}")
                page.wait_for_function("document.title === 'attack done'")
                results[mode] = {"attack": page.evaluate("window.__attack"), "app": app, "supervisor": supervisor}
                context.close()
        finally:
            browser.close()
    return results


def test_a_hostile_page_cannot_create_a_supervisor_user_nor_a_service_worker_beyond_its_app(supervisors):
    from django.contrib.auth.models import User

    if not CHROMIUM.exists():
        pytest.fail(f"no browser: {CHROMIUM} is missing (scripts/test.sh installs Debian's chromium)", False)
    results = in_a_browser_thread(_attack, supervisors)

    # On its own origin the page cannot read the supervisor's form (no CORS), so its post has
    # no CSRF token and is refused; no user is created.
    hosts = results["hosts"]["attack"]
    assert hosts.get("read_form") is not True, hosts
    assert not User.objects.filter(username=INTRUDER).exists(), hosts
    # Its service worker is confined to its own origin: the app's, not the supervisor's.
    assert hosts.get("service_worker_scope", "").startswith(results["hosts"]["app"]), hosts

    # Path mode: the worker's Service-Worker-Allowed: / never reaches the browser, which then
    # refuses a scope wider than the script's folder, /apps/evil/.
    paths = results["paths"]["attack"]
    assert "service_worker_scope" not in paths, paths
    assert "scope" in paths.get("service_worker_error", ""), paths
