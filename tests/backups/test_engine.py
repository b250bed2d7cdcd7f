"""The backup engine against the real PostgreSQL and SQLite: a dump restored gives back the
very rows and files (after they were changed), the manifest's check passes on the restore,
and a corrupted part is refused before anything is restored."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from apps_registry.control.backups import engine, targets
from apps_registry.control.backups.engine import BackupError
from apps_registry.control.backups.store import DirectoryStore
from tests.support import services

SCHEMA = [
    "CREATE TABLE django_migrations (id serial PRIMARY KEY, app text, name text, applied text)",
    "CREATE TABLE contacts_contact (id integer PRIMARY KEY, name text, attachment text)",
    "INSERT INTO django_migrations (app, name, applied) VALUES ('contacts', '0001_initial', 'then')",
]


def _pg(name: str):
    return psycopg.connect(
        host=services.PG_HOST, port=services.PG_PORT, user=services.PG_USER, dbname=name, autocommit=True
    )


def _pg_rows(name: str) -> list:
    with _pg(name) as conn:
        return conn.execute("SELECT id, name, attachment FROM contacts_contact ORDER BY id").fetchall()


def _sqlite_rows(path: str) -> list:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT id, name, attachment FROM contacts_contact ORDER BY id").fetchall()


def _uploads(root: Path) -> Path:
    (root / "contacts").mkdir(parents=True)
    (root / "contacts" / "notes.txt").write_bytes(b"analytical\n" * 100)
    return root


@pytest.fixture
def pg_app(db):
    app = f"bk_pg_{services.RUN_ID[-4:]}"
    database = targets.app_database(app, {})
    targets.create_empty(database)
    with _pg(database.name) as conn:
        for statement in SCHEMA:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO contacts_contact"
            " SELECT i, 'Contact ' || i, 'contacts/notes.txt' FROM generate_series(1, 500) i"
        )
    yield database
    targets.drop(database)


@pytest.fixture
def sqlite_app(tmp_path):
    path = tmp_path / "apps" / "bk_sqlite.sqlite3"
    path.parent.mkdir()
    with sqlite3.connect(path) as conn:
        for statement in SCHEMA:
            conn.execute(statement.replace("id serial", "id integer"))
        conn.executemany(
            "INSERT INTO contacts_contact VALUES (?, ?, ?)", [(i, f"Contact {i}", "") for i in range(1, 301)]
        )
    base = targets.app_database("bk_sqlite", {})
    return dataclasses.replace(base, vendor="sqlite", settings={**base.settings, "NAME": str(path)})


def _round_trip(database, rows, change, tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    media = _uploads(tmp_path / "media" / database.app)
    before = rows(database.name)
    result = engine.dump(database, media, store, f"{database.app}/b1", app=database.app)
    assert result.manifest["tables"]["contacts_contact"] == len(before)
    assert result.manifest["migrations"] == [["contacts", "0001_initial"]]
    assert [f["path"] for f in result.manifest["files"]] == ["contacts/notes.txt"]
    assert result.size > 0 and len(result.checksum) == 64
    # Private like the rest of storage: folders 0700, parts 0600.
    part = store.path(f"{database.app}/b1/{engine.DATABASE_PART}")
    assert part.stat().st_mode & 0o077 == 0 and part.parent.stat().st_mode & 0o077 == 0

    change(database.name)
    (media / "contacts" / "notes.txt").unlink()
    (media / "stray.txt").write_text("added after the backup")
    assert rows(database.name) != before

    engine.restore(store, f"{database.app}/b1", result.checksum, database, media)
    assert rows(database.name) == before
    assert (media / "contacts" / "notes.txt").read_bytes() == b"analytical\n" * 100
    assert not (media / "stray.txt").exists()
    engine.check(result.manifest, database, media)


def test_postgresql_round_trip_gives_back_rows_and_files(pg_app, tmp_path):
    def change(name):
        with _pg(name) as conn:
            conn.execute("DELETE FROM contacts_contact WHERE id > 10")
            conn.execute("UPDATE contacts_contact SET name = 'changed'")
            conn.execute("CREATE TABLE added_later (id int)")

    _round_trip(pg_app, _pg_rows, change, tmp_path)
    with _pg(pg_app.name) as conn:  # the whole database was replaced, not merged
        assert not conn.execute("SELECT 1 FROM pg_tables WHERE tablename = 'added_later'").fetchone()


def test_sqlite_round_trip_gives_back_rows_and_files(sqlite_app, tmp_path):
    def change(name):
        with sqlite3.connect(name) as conn:
            conn.execute("DELETE FROM contacts_contact WHERE id > 10")

    _round_trip(sqlite_app, _sqlite_rows, change, tmp_path)


def test_a_corrupted_part_is_refused_before_anything_is_restored(sqlite_app, tmp_path):
    store = DirectoryStore(tmp_path / "store")
    media = _uploads(tmp_path / "media" / "bk_sqlite")
    result = engine.dump(sqlite_app, media, store, "bk_sqlite/b2", app="bk_sqlite")
    part = store.path(f"bk_sqlite/b2/{engine.DATABASE_PART}")
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    with sqlite3.connect(sqlite_app.name) as conn:
        conn.execute("DELETE FROM contacts_contact")
    with pytest.raises(BackupError, match="database.dump does not match its checksum"):
        engine.restore(store, "bk_sqlite/b2", result.checksum, sqlite_app, media)
    assert _sqlite_rows(sqlite_app.name) == []  # untouched
    with pytest.raises(BackupError, match="manifest does not match"):
        engine.verify(store, "bk_sqlite/b2", "0" * 64)


def test_the_check_finds_rows_missing_from_a_restore(sqlite_app, tmp_path):
    store = DirectoryStore(tmp_path / "store")
    result = engine.dump(sqlite_app, tmp_path / "none", store, "bk_sqlite/b3", app="bk_sqlite")
    with sqlite3.connect(sqlite_app.name) as conn:
        conn.execute("DELETE FROM contacts_contact WHERE id = 1")
    with pytest.raises(BackupError, match="row counts differ after restore: contacts_contact 299 .expected 300."):
        engine.check(result.manifest, sqlite_app, tmp_path / "none")
    assert settings.APP_CONFIG.backup_interval == 0  # the tests' processes schedule nothing
