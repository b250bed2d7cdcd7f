"""Login throttling in standalone mode, on a real gunicorn with SQLite and no Redis: a hosted
app's attempts are counted in the instance's own database (never the app's, which holds only
the app's tables), under ``<app>/<username>``, so the supervisor's admin of the same name and
address is not paused."""

from __future__ import annotations

import sqlite3

import pytest

from tests.hosting.test_runtime_hosting import Client
from tests.support.processes import free_port, gunicorn, manage, wait_until

pytestmark = pytest.mark.cluster


def test_a_hosted_apps_failures_pause_that_app_only(tmp_path):
    storage = tmp_path / "standalone"
    port = free_port()
    env = {
        "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",
        "APP_MODE": "standalone",
        "SECRET_KEY": "test-secret-key-not-for-production",
        "DEBUG": "false",
        "ALLOWED_HOSTS": "*",
        "DB_DIALECT": "sqlite",
        "DB_STORAGE": "",
        "APP_STORAGE_DIR": str(storage),
        "APP_SUPERVISOR_REDIS_URL": "",
        "APP_COMMAND_REDIS_URL": "",
        "ADMIN_USERNAME": "alice",
        "ADMIN_PASSWORD": "pw-supervisor",
    }
    for command in (["migrate", "-v0"], ["ensure_admin"]):
        result = manage(command, env)
        assert result.returncode == 0, result.stderr
    result = manage(
        ["host_app", "rt_sa", "--modules", "tasks", "--admin-user", "alice", "--admin-password", "pw-app"], env
    )
    assert result.returncode == 0, result.stderr
    web = gunicorn("standalone_throttle", port, env, tmp_path, workers=2, threads=2).start()
    try:
        wait_until(lambda: Client(port).get("/apps/rt_sa/")[0] == 302, timeout=30, message="rt_sa served")
        client = Client(port)
        for number in range(1, 11):
            assert client.login("rt_sa", "alice", f"wrong-{number}") == 200, number
        status, headers, body = client.login_response("rt_sa", "alice", "wrong-11")
        assert status == 429, body[-500:]
        assert "Too many failed logins" in body and int(headers["Retry-After"]) > 0
        assert client.login("rt_sa", "alice", "pw-app") == 429  # the right one too, while paused

        # The supervisor's own admin, same username and address: not paused.
        admin = Client(port)
        token = admin.csrf_token("/admin/login/")
        status, _, _ = admin.post_form(
            "/admin/login/?next=/admin/",
            {"csrfmiddlewaretoken": token, "username": "alice", "password": "pw-supervisor", "next": "/admin/"},
        )
        assert status == 302
    finally:
        web.stop()

    with sqlite3.connect(storage / "db.sqlite3") as registry:
        counted = registry.execute("SELECT username, failures_since_start FROM axes_accessattempt").fetchall()
    assert counted == [("rt_sa/alice", 12)]
    with sqlite3.connect(storage / "apps" / "rt_sa.sqlite3") as app_db:
        tables = {row[0] for row in app_db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not {t for t in tables if t.startswith("axes_")}
