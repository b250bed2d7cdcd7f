"""The local runtime state file and the runtime API, in this process (real PostgreSQL)."""

import json
import threading

import psycopg
import pytest
from django.contrib.auth.hashers import make_password
from django.db import connections

from tests.support import services
from worker_agent.hosting import app_databases, app_initialisation, local_state, runtime

pytestmark = pytest.mark.usefixtures("forget_app_aliases")


@pytest.fixture
def state_file(tmp_path):
    return tmp_path / "runtime" / "env_t.json"


def test_status_round_trip_and_atomic_file(state_file):
    assert local_state.app_entry("crm", state_file) is None
    local_state.set_status("crm", "starting", spec={"name": "crm", "options": {}, "generation": 4}, path=state_file)
    local_state.set_status("crm", "error", error="boom", path=state_file)
    entry = local_state.app_entry("crm", state_file)
    assert (entry["status"], entry["error"], entry["generation"]) == ("error", "boom", 4)
    local_state.set_status("crm", "running", path=state_file)
    assert local_state.app_entry("crm", state_file)["error"] == ""
    assert json.loads(state_file.read_text())["apps"]["crm"]["status"] == "running"
    assert [p.name for p in state_file.parent.iterdir() if p.name.endswith(".tmp")] == []
    with pytest.raises(ValueError, match="unknown app status"):
        local_state.set_status("crm", "flying", path=state_file)
    assert local_state.forget("crm", state_file) is True
    assert local_state.app_entry("crm", state_file) is None


def test_concurrent_writers_lose_nothing(state_file):
    threads = [
        threading.Thread(target=local_state.set_status, args=(f"app{i}", "running"), kwargs={"path": state_file})
        for i in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(local_state.read_apps(state_file)) == sorted(f"app{i}" for i in range(20))


def test_broken_state_file_serves_nothing_and_is_never_overwritten(state_file):
    state_file.parent.mkdir(parents=True)
    state_file.write_text("{not json")
    assert local_state.read_apps(state_file) == {}
    with pytest.raises(local_state.StateFileError, match="not valid JSON"):
        local_state.set_status("crm", "running", path=state_file)
    assert state_file.read_text() == "{not json"


def test_refused_specs_say_why():
    with pytest.raises(runtime.AppStartError, match="invalid app name"):
        runtime.start_app({"name": "../etc", "options": {}})
    with pytest.raises(runtime.AppStartError, match="unknown module"):
        runtime.start_app({"name": "badmods", "options": {"modules": ["payroll"]}})
    assert local_state.app_entry("badmods")["status"] == "error"
    runtime.remove_app("badmods")


def _database_exists(name: str) -> bool:
    with psycopg.connect(host=services.PG_HOST, port=services.PG_PORT, user=services.PG_USER, dbname="postgres") as c:
        return c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def test_start_stop_remove_in_process(django_db_blocker):
    spec = {
        "name": "inproc",
        "options": {"modules": ["tasks"], "initial_admin": {"username": "boss", "password_hash": make_password("x")}},
        "generation": 1,
    }
    db_name = f"{services.RUN_ID}_inproc"
    with django_db_blocker.unblock():
        runtime.start_app(spec)
        assert _database_exists(db_name)
        assert runtime.running_apps()["inproc"]["generation"] == 1
        seen = []
        runtime.add_status_listener(lambda *args: seen.append(args))
        try:
            runtime.start_app({**spec, "generation": 2})  # a running app is never shown "starting"
        finally:
            runtime._listeners.clear()
        assert seen == [("inproc", "running", "")]
        records = app_initialisation.initialisations("app:inproc")
        assert [r["first"] for r in records] == [True, False]
        assert records[0]["migrations_applied"] > 0 and records[1]["migrations_applied"] == 0
        with connections["app:inproc"].cursor() as cursor:
            cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            tables = {row[0] for row in cursor.fetchall()}
            cursor.execute("SELECT username FROM auth_user")
            assert [row[0] for row in cursor.fetchall()] == ["boss"]
        connections["app:inproc"].close()
        assert "tasks_task" in tables and "contacts_contact" not in tables
        assert not any(t.startswith("apps_registry") for t in tables)

        runtime.stop_app("inproc")
        assert local_state.app_status("inproc") == "stopped" and "inproc" not in runtime.running_apps()
        runtime.remove_app("inproc")
        assert local_state.app_entry("inproc") is None and _database_exists(db_name)
        runtime.remove_app("inproc", drop_data=True)
        assert not _database_exists(db_name)


def test_plain_password_is_refused(django_db_blocker):
    spec = {"name": "plainpw", "options": {"initial_admin": {"username": "boss", "password_hash": "hunter2"}}}
    with django_db_blocker.unblock():
        with pytest.raises(runtime.AppStartError, match="not a Django password hash"):
            runtime.start_app(spec)
        assert local_state.app_entry("plainpw")["status"] == "error"
        runtime.remove_app("plainpw", drop_data=True)


def test_supervisor_database_has_no_app_tables(db):
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = {row[0] for row in cursor.fetchall()}
    assert "apps_registry_application" in tables
    assert not {t for t in tables if t.startswith(("contacts_", "tasks_", "appsup_"))}


def test_explicit_database_name_is_used(django_db_blocker):
    explicit = f"{services.RUN_ID}_explicit_crm"
    spec = {"name": "explicitdb", "options": {"modules": ["contacts"], "database": {"name": explicit}}}
    with django_db_blocker.unblock():
        runtime.start_app(spec)
        assert _database_exists(explicit) and not _database_exists(f"{services.RUN_ID}_explicitdb")
        runtime.remove_app("explicitdb", drop_data=True)
        assert not _database_exists(explicit)
    with pytest.raises(runtime.AppStartError, match="not a plain identifier"):
        runtime.start_app({"name": "explicitdb", "options": {"database": {"name": 'x"; DROP'}}})
    runtime.remove_app("explicitdb")


@pytest.mark.parametrize("vendor", ["sqlite", "postgresql"])
def test_init_lock_excludes_a_second_holder(vendor, tmp_path, django_db_blocker):
    if vendor == "sqlite":
        db = app_databases.AppDatabase("locked", "app:locked", "sqlite", {"NAME": str(tmp_path / "locked.sqlite3")})
    else:
        db = app_databases.describe("lockedpg")
    with django_db_blocker.unblock():
        app_databases.ensure_exists(db)
        if vendor == "postgresql":
            app_databases.register(db, frozenset())  # its lock is taken on the app connection
        held, release = threading.Event(), threading.Event()

        def holder():
            try:
                with app_databases.init_lock(db, timeout=5):  # on this thread's own connection
                    held.set()
                    release.wait(5)
            finally:
                app_databases.close(db.alias)

        thread = threading.Thread(target=holder)
        thread.start()
        assert held.wait(5)
        try:
            with (
                pytest.raises(app_databases.DatabaseError, match="waiting for another initialisation"),
                app_databases.init_lock(db, timeout=0.2),
            ):
                pass
        finally:
            release.set()
            thread.join()
        with app_databases.init_lock(db, timeout=2):
            pass
        app_databases.drop(db)
