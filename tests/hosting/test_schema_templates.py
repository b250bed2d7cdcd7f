"""New app databases are copied from a schema template (real PostgreSQL, and SQLite files)."""

import psycopg
import pytest
from django.db import connections

from tests.support import services
from worker_agent.hosting import app_databases, app_initialisation, app_schema

CONTACTS = frozenset({"contacts"})
TASKS = frozenset({"tasks"})

pytestmark = pytest.mark.usefixtures("forget_app_aliases")


def _server(dbname: str = "postgres") -> psycopg.Connection:
    return psycopg.connect(
        host=services.PG_HOST, port=services.PG_PORT, user=services.PG_USER, dbname=dbname, autocommit=True
    )


def _exists(name: str) -> bool:
    with _server() as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def _drop(name: str) -> None:
    with _server() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_first_start_clones_the_template_and_a_later_one_applies_nothing(django_db_blocker):
    db = app_databases.describe("tpl_crm")
    with django_db_blocker.unblock():
        first = app_initialisation.initialise(db, CONTACTS, None, "env_a")
        second = app_initialisation.initialise(db, CONTACTS, None, "env_b")
    expected = app_schema.expected_migrations(CONTACTS)
    assert first == {"created": True, "cloned": True, "first": True, "migrations_applied": len(expected)}
    assert second == {"created": False, "cloned": False, "first": False, "migrations_applied": 0}
    with _server() as conn:  # nobody may connect to it, so nobody can block a copy
        allowed = conn.execute(
            "SELECT datallowconn FROM pg_database WHERE datname = %s", (app_schema.template_name(CONTACTS),)
        ).fetchone()
    assert allowed == (False,)
    with _server(db.name) as conn:
        assert set(conn.execute("SELECT app, name FROM django_migrations").fetchall()) == expected
        # What post_migrate would have created came with the copy.
        models = {row[0] for row in conn.execute("SELECT model FROM django_content_type")}
        assert {"contact", "user", "session"} <= models and "task" not in models
        assert conn.execute("SELECT count(*) FROM auth_permission").fetchone()[0] >= 4 * len(models)
        # The template carries no initialisation of its own: this app's two are the only ones.
        rows = conn.execute("SELECT environment, first_init FROM appsup_initialisation ORDER BY started_at")
        assert rows.fetchall() == [("env_a", True), ("env_b", False)]


def test_a_dropped_template_is_rebuilt_and_a_half_built_one_replaced(django_db_blocker):
    template = app_schema.template_name(TASKS)
    _drop(template)
    with _server() as conn:  # a build cut short leaves this behind
        conn.execute(f'CREATE DATABASE "{template}_building"')
    with django_db_blocker.unblock():
        result = app_initialisation.initialise(app_databases.describe("tpl_todo"), TASKS, None, "env_a")
    assert result["cloned"] and result["first"]
    assert _exists(template) and not _exists(f"{template}_building")


def test_without_a_usable_template_the_database_is_migrated_from_scratch(django_db_blocker, monkeypatch):
    def no_template(*args):
        raise app_databases.DatabaseError("template server on fire")

    monkeypatch.setattr(app_schema, "build_pg_template", no_template)
    db = app_databases.describe("tpl_plain")
    with django_db_blocker.unblock():
        result = app_initialisation.initialise(db, CONTACTS, None, "env_a")
    assert result["created"] and not result["cloned"]
    assert result["migrations_applied"] == len(app_schema.expected_migrations(CONTACTS))
    with _server(db.name) as conn:
        assert conn.execute("SELECT count(*) FROM auth_permission").fetchone()[0] > 0


def test_sqlite_app_databases_are_copies_of_a_template_file(tmp_path, django_db_blocker):
    def sqlite_db(name: str) -> app_databases.AppDatabase:
        settings_ = {
            **connections.settings["default"],
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(tmp_path / "apps" / f"{name}.sqlite3"),
            "OPTIONS": {},
        }
        return app_databases.AppDatabase(name, f"app:{name}", "sqlite", settings_)

    with django_db_blocker.unblock():
        results = [app_initialisation.initialise(sqlite_db(n), TASKS, None, "env_s") for n in ("lite1", "lite2")]
        tables = connections["app:lite2"].introspection.table_names(connections["app:lite2"].cursor())
        connections["app:lite2"].close()
    assert [r["cloned"] for r in results] == [True, True]
    templates = sorted(p.name for p in (tmp_path / "apps" / ".templates").iterdir())
    name = app_schema.template_name(TASKS)
    assert templates == [f"{name}.sqlite3", f"{name}.sqlite3.lock"]  # one self-contained file (no -wal)
    assert "tasks_task" in tables and "contacts_contact" not in tables and "appsup_initialisation" in tables
