"""Dump, verify, restore and check one app's backup.

A backup is three parts in the store under ``<app>/<backup id>/``:

- ``database.dump`` — PostgreSQL: ``pg_dump -Fc`` of the app's database, taken in an exported
  snapshot (``pg_export_snapshot``) so that the manifest's row counts are those of the dump;
  SQLite: a copy made with the online backup API (``sqlite3.Connection.backup``), counted on the
  copy itself;
- ``files.tar`` — the app's uploads (``<APP_MEDIA_DIR>/<app>/``), an uncompressed tar;
- ``manifest.json`` — what a restore must give back: each part's size and sha256, the row count
  of every table, the migrations applied, every file with its size and sha256.

The backup's checksum is the sha256 of the manifest, which holds the parts' own: verifying a
backup is checking the manifest against the recorded checksum and each part against the
manifest, before anything is restored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from apps_registry.control.backups import targets
from apps_registry.control.backups.store import BackupStore, StoreError
from apps_registry.control.backups.targets import AppDatabase
from supervisor_site import private_files

FORMAT = 1
CHUNK = 1 << 20
DATABASE_PART, FILES_PART, MANIFEST_PART = "database.dump", "files.tar", "manifest.json"
# pg_dump/pg_restore of a large app may take long; past this it is stuck, not slow.
TOOL_TIMEOUT = 6 * 3600


class BackupError(Exception):
    """A backup, restore or check that failed, worded for the operator."""


@dataclass(frozen=True)
class Result:
    manifest: dict
    checksum: str  # sha256 of the manifest's bytes
    size: int  # every part, the manifest included
    duration: float


def part_key(prefix: str, part: str) -> str:
    return f"{prefix}/{part}"


class _Hashing:
    """A write-only file that hashes and counts what goes through it."""

    def __init__(self, target: BinaryIO):
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        self.target.write(data)
        return len(data)

    def flush(self) -> None:
        self.target.flush()

    def described(self) -> dict:
        return {"size": self.size, "sha256": self.sha256.hexdigest()}


def _file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _first_line(text: bytes | str) -> str:
    text = text.decode(errors="replace") if isinstance(text, bytes) else text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


# --- PostgreSQL -------------------------------------------------------------------------------


def _pg_env(db: AppDatabase) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    s = db.settings
    for variable, key in (("PGHOST", "HOST"), ("PGPORT", "PORT"), ("PGUSER", "USER"), ("PGPASSWORD", "PASSWORD")):
        if s.get(key):
            env[variable] = str(s[key])
    env["PGDATABASE"] = db.name
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


def _pg_connect(db: AppDatabase):
    import psycopg

    s = db.settings
    try:
        return psycopg.connect(
            host=s["HOST"] or None,
            port=s["PORT"] or None,
            user=s["USER"] or None,
            password=s["PASSWORD"] or None,
            dbname=db.name,
            autocommit=True,
            connect_timeout=10,
        )
    except psycopg.Error as error:
        raise BackupError(f"cannot connect to {db.label}: {_first_line(str(error))}") from None


def _pg_state(conn) -> tuple[dict[str, int], list[list[str]]]:
    from psycopg import sql

    tables = [
        row[0]
        for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        ).fetchall()
    ]
    counts = {
        table: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
        for table in tables
    }
    migrations = []
    if "django_migrations" in counts:
        migrations = [list(r) for r in conn.execute("SELECT app, name FROM django_migrations ORDER BY app, name")]
    return counts, migrations


def _pg_dump(db: AppDatabase, out: BinaryIO) -> tuple[dict[str, int], list[list[str]]]:
    with _pg_connect(db) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        counts, migrations = _pg_state(conn)
        # stderr to a file: a pipe nobody reads while stdout is copied could fill and block it.
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(
                ["pg_dump", "-Fc", "--no-owner", "--no-privileges", f"--snapshot={snapshot}"],
                env=_pg_env(db),
                stdout=subprocess.PIPE,
                stderr=errors,
            )
            with process:
                assert process.stdout is not None
                while chunk := process.stdout.read(CHUNK):
                    out.write(chunk)
                status = process.wait(timeout=TOOL_TIMEOUT)
            errors.seek(0)
            stderr = errors.read()
        conn.execute("COMMIT")
    if status:
        raise BackupError(f"pg_dump of {db.label} failed: {_first_line(stderr)}")
    return counts, migrations


def _pg_restore(db: AppDatabase, dump: BinaryIO) -> None:
    targets.create_empty(db)
    result = subprocess.run(
        ["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "-d", db.name],
        env=_pg_env(db),
        stdin=dump,
        capture_output=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )
    if result.returncode:
        raise BackupError(f"pg_restore into {db.label} failed: {_first_line(result.stderr)}")


# --- SQLite -----------------------------------------------------------------------------------


def _quoted(identifier: str) -> str:
    return identifier.replace('"', '""')


def _sqlite_state(conn: sqlite3.Connection) -> tuple[dict[str, int], list[list[str]]]:
    tables = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    # Names from sqlite_master, quoted with their own quotes doubled: an identifier, never SQL.
    counts = {t: conn.execute(f'SELECT count(*) FROM "{_quoted(t)}"').fetchone()[0] for t in tables}  # noqa: S608
    migrations = []
    if "django_migrations" in counts:
        migrations = [list(r) for r in conn.execute("SELECT app, name FROM django_migrations ORDER BY app, name")]
    return counts, migrations


def _sqlite_dump(db: AppDatabase, out: BinaryIO) -> tuple[dict[str, int], list[list[str]]]:
    source_path = Path(db.name)
    if not source_path.is_file():
        raise BackupError(f"{db.label} does not exist")
    with tempfile.TemporaryDirectory(prefix="backup-") as scratch:
        copy_path = Path(scratch) / "copy.sqlite3"
        try:
            source = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True, timeout=20)
            copy = sqlite3.connect(copy_path)
            with contextlib.closing(source), contextlib.closing(copy):
                source.backup(copy)  # the online backup API: a consistent copy while the app writes
                copy.execute("PRAGMA journal_mode=DELETE")
                state = _sqlite_state(copy)
        except sqlite3.Error as error:
            raise BackupError(f"backup of {db.label} failed: {error}") from None
        with open(copy_path, "rb") as handle:
            shutil.copyfileobj(handle, out, CHUNK)
    return state


def _sqlite_restore(db: AppDatabase, dump: BinaryIO) -> None:
    path = Path(db.name)
    private_files.private_dir(path.parent)
    targets.drop(db)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".restore-", delete=False) as staged:
        shutil.copyfileobj(dump, staged, CHUNK)
    os.replace(staged.name, path)
    private_files.private_sqlite(path)


# --- Files ------------------------------------------------------------------------------------


def _files_of(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                yield path


def _dump_files(root: Path, out: BinaryIO) -> list[dict]:
    listed = []
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for path in _files_of(root):
            relative = path.relative_to(root).as_posix()
            listed.append({"path": relative, "size": path.stat().st_size, "sha256": _file_digest(path)})
            archive.add(path, arcname=relative, recursive=False)
    return listed


def _restore_files(archive_file: BinaryIO, root: Path) -> None:
    staged = root.with_name(f".restore-{root.name}")
    shutil.rmtree(staged, ignore_errors=True)
    private_files.private_dir(staged)
    try:
        with tarfile.open(fileobj=archive_file, mode="r|") as archive:
            # The data filter refuses absolute paths, links out of the folder, devices.
            archive.extractall(staged, filter="data")
    except (tarfile.TarError, OSError) as error:
        shutil.rmtree(staged, ignore_errors=True)
        raise BackupError(f"the backup's files cannot be extracted: {error}") from None
    shutil.rmtree(root, ignore_errors=True)
    os.replace(staged, root)


# --- Public operations ------------------------------------------------------------------------


def dump(db: AppDatabase, media: Path, store: BackupStore, prefix: str, *, app: str) -> Result:
    """Back up ``db`` and the uploads under ``media`` into ``store`` under ``prefix``."""
    began = time.monotonic()
    try:
        with store.writer(part_key(prefix, DATABASE_PART)) as raw:
            database = _Hashing(raw)
            tables, migrations = (_sqlite_dump if db.vendor == "sqlite" else _pg_dump)(db, database)
        with store.writer(part_key(prefix, FILES_PART)) as raw:
            files_part = _Hashing(raw)
            files = _dump_files(media, files_part)
        manifest = {
            "format": FORMAT,
            "app": app,
            "vendor": db.vendor,
            "created_at": time.time(),
            "parts": {DATABASE_PART: database.described(), FILES_PART: files_part.described()},
            "tables": tables,
            "migrations": migrations,
            "files": files,
        }
        encoded = json.dumps(manifest, sort_keys=True, indent=1).encode()
        with store.writer(part_key(prefix, MANIFEST_PART)) as raw:
            raw.write(encoded)
    except StoreError as error:
        raise BackupError(str(error)) from None
    except OSError as error:
        raise BackupError(f"backup of {app} failed: {error}") from None
    size = database.size + files_part.size + len(encoded)
    return Result(manifest, hashlib.sha256(encoded).hexdigest(), size, time.monotonic() - began)


def verify(store: BackupStore, prefix: str, checksum: str) -> dict:
    """The backup's manifest, once it and every part match their checksums; BackupError otherwise."""
    try:
        with store.reader(part_key(prefix, MANIFEST_PART)) as raw:
            encoded = raw.read()
        if hashlib.sha256(encoded).hexdigest() != checksum:
            raise BackupError("the manifest does not match the backup's checksum")
        try:
            manifest = json.loads(encoded)
        except ValueError:
            raise BackupError("the manifest is not JSON") from None
        for part, expected in manifest["parts"].items():
            with store.reader(part_key(prefix, part)) as raw:
                digest = hashlib.file_digest(raw, "sha256").hexdigest()
            if digest != expected["sha256"]:
                raise BackupError(f"part {part} does not match its checksum (corrupted or changed)")
    except StoreError as error:
        raise BackupError(str(error)) from None
    return manifest


def restore(store: BackupStore, prefix: str, checksum: str, db: AppDatabase, media: Path) -> dict:
    """Replace ``db`` and the uploads under ``media`` with the backup's (verified first); the
    manifest restored."""
    manifest = verify(store, prefix, checksum)
    if manifest.get("vendor") != db.vendor:
        raise BackupError(f"a {manifest.get('vendor')} backup cannot be restored into {db.label}")
    try:
        with store.reader(part_key(prefix, DATABASE_PART)) as raw:
            (_sqlite_restore if db.vendor == "sqlite" else _pg_restore)(db, raw)
        with store.reader(part_key(prefix, FILES_PART)) as raw:
            _restore_files(raw, media)
    except StoreError as error:
        raise BackupError(str(error)) from None
    except targets.DatabaseError as error:
        raise BackupError(str(error)) from None
    return manifest


def check(manifest: dict, db: AppDatabase, media: Path) -> None:
    """That ``db`` and ``media`` hold what the manifest says (migrations, row counts, files)."""
    if db.vendor == "sqlite":
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db.name}?mode=ro", uri=True)) as conn:
                tables, migrations = _sqlite_state(conn)
        except sqlite3.Error as error:
            raise BackupError(f"the restored {db.label} cannot be read: {error}") from None
    else:
        with _pg_connect(db) as conn:
            tables, migrations = _pg_state(conn)
    if migrations != manifest["migrations"]:
        raise BackupError("the restored migration state differs from the backup's")
    wrong = sorted(t for t in set(tables) | set(manifest["tables"]) if tables.get(t) != manifest["tables"].get(t))
    if wrong:
        shown = ", ".join(f"{t} {tables.get(t)} (expected {manifest['tables'].get(t)})" for t in wrong[:5])
        raise BackupError(f"row counts differ after restore: {shown}")
    for entry in manifest["files"]:
        path = media / entry["path"]
        if not path.is_file() or _file_digest(path) != entry["sha256"]:
            raise BackupError(f"file {entry['path']} is missing or different after restore")
