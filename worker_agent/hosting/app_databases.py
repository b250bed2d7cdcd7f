"""Each hosted app's own database on its server: where it is, creating, locking and dropping it.

Naming: on PostgreSQL the database ``<APP_DB_PREFIX><name>`` on this process's database server
(the ``DB_*`` settings), on SQLite the file ``<storage>/apps/<name>.sqlite3``. An app's options
may name another database: ``{"database": {"name": ..., "host": ..., "port": ..., "user": ...,
"password": ...}}`` (every key but ``name`` optional).

The initialisation lock, which every environment sharing the app sees: a PostgreSQL advisory
lock taken on this thread's connection to the app database itself, or an exclusive file lock
beside the SQLite file. What a database holds and how it gets its tables is ``app_schema``'s
concern; initialising an app (lock, schema, first data) is ``app_initialisation``'s.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connections

from supervisor_site import catalogue, private_files
from worker_agent.hosting.db_router import alias_for, set_enabled_modules
from worker_agent.hosting.file_lock import FileLock

log = logging.getLogger(__name__)

MAINTENANCE_DB = "postgres"
# Explicit database names are quoted, but keep them to plain identifiers anyway.
DB_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
LOCK_POLL = 0.05
# What creating a database did: it was there already, it was created empty, or copied from
# the schema template.
EXISTED, CREATED, CLONED = "existed", "created", "cloned"
# Called with the server's maintenance connection (None on SQLite) when a database must be
# created: the template to copy it from, or None for an empty one.
TemplateSource = Callable[[Any], "str | None"]


class DatabaseError(Exception):
    """A problem with an app's database, worded for the operator (becomes the app's error)."""


@dataclass(frozen=True)
class AppDatabase:
    app: str
    alias: str
    vendor: str  # "postgresql" or "sqlite"
    settings: dict = field(compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.settings["NAME"]

    @property
    def label(self) -> str:
        """How the database is named in messages (never the password)."""
        if self.vendor == "sqlite":
            return f"SQLite file {self.name}"
        return f"PostgreSQL database {self.name!r} on {self.settings['HOST']}:{self.settings['PORT']}"


def modules_of(spec: dict) -> frozenset[str]:
    """The business modules a spec enables; unknown ones are an error, not silently dropped."""
    modules = (spec.get("options") or {}).get("modules") or []
    if isinstance(modules, str):
        modules = [m.strip() for m in modules.split(",") if m.strip()]
    unknown = sorted(set(modules) - catalogue.labels())
    if unknown:
        raise DatabaseError(
            f"unknown module(s) {', '.join(map(repr, unknown))}; available: {', '.join(sorted(catalogue.labels()))}"
        )
    return frozenset(modules)


def apps_dir() -> Path:
    return settings.APP_CONFIG.storage_dir / "apps"


def describe(name: str, options: dict | None = None) -> AppDatabase:
    """Where app ``name``'s database lives, as a Django DATABASES entry."""
    explicit = (options or {}).get("database") or {}
    if not isinstance(explicit, dict):
        raise DatabaseError('options.database must be an object such as {"name": "crm_data"}')
    db_name = explicit.get("name") or ""
    if db_name and not DB_NAME_RE.match(str(db_name)):
        raise DatabaseError(f"options.database.name {db_name!r} is not a plain identifier (letters, digits, _)")
    base = copy.deepcopy(connections.settings["default"])
    base.update(CONN_MAX_AGE=0, CONN_HEALTH_CHECKS=False, ATOMIC_REQUESTS=False)
    if base["ENGINE"] == "django.db.backends.sqlite3":
        base["NAME"] = str(apps_dir() / f"{db_name or name}.sqlite3")
        vendor = "sqlite"
    elif base["ENGINE"] == "django.db.backends.postgresql":
        base["NAME"] = db_name or f"{settings.APP_CONFIG.app_db_prefix}{name}"
        for key in ("host", "port", "user", "password"):
            if explicit.get(key) not in (None, ""):
                base[key.upper()] = str(explicit[key])
        vendor = "postgresql"
    else:
        raise DatabaseError(f"hosting apps is not supported on database engine {base['ENGINE']}")
    base.setdefault("TEST", {})
    return AppDatabase(app=name, alias=alias_for(name), vendor=vendor, settings=base)


def register(db: AppDatabase, modules: frozenset[str]) -> None:
    """Make ``db.alias`` usable through ``django.db.connections`` in this process."""
    current = connections.settings.get(db.alias)
    if current is None:
        connections.settings[db.alias] = copy.deepcopy(db.settings)
    elif current != db.settings:
        # In place: every thread's connection object for the alias shares this dict.
        close(db.alias)
        current.clear()
        current.update(copy.deepcopy(db.settings))
    set_enabled_modules(db.alias, modules)


def unregister(alias: str) -> None:
    """Let go of a removed app's database in this process.

    The alias' settings stay: connection objects of other threads keep a reference to that
    dict, and ``register`` updates it in place, so none of them can connect with stale settings.
    """
    close(alias)
    forget_cached_ids(alias)


def close(alias: str) -> None:
    """Close this thread's connection to ``alias`` if it has one."""
    if alias in connections.settings:
        try:
            connections[alias].close()
        except Exception:  # a broken connection is as good as closed
            log.debug("closing %s failed", alias, exc_info=True)


def forget_cached_ids(alias: str) -> None:
    """Content type ids cached for ``alias`` are wrong once its database was recreated."""
    from django.contrib.contenttypes.models import ContentType

    ContentType.objects._cache.pop(alias, None)


# --- PostgreSQL -------------------------------------------------------------------------------


def _pg_connect(db: AppDatabase, dbname: str):
    import psycopg

    s = db.settings
    return psycopg.connect(
        host=s["HOST"] or None,
        port=s["PORT"] or None,
        user=s["USER"] or None,
        password=s["PASSWORD"] or None,
        dbname=dbname,
        autocommit=True,
        connect_timeout=10,
    )


def _pg_maintenance(db: AppDatabase):
    """A connection to the server that is not to the app database: postgres, else our own."""
    import psycopg

    last_error: Exception | None = None
    for dbname in dict.fromkeys([MAINTENANCE_DB, connections.settings["default"]["NAME"]]):
        try:
            return _pg_connect(db, dbname)
        except psycopg.OperationalError as error:
            last_error = error
    raise DatabaseError(f"cannot connect to the database server for {db.label}: {first_line(last_error)}")


def first_line(error: object) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def pg_database_exists(conn, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def _pg_create(db: AppDatabase, template_source: TemplateSource | None) -> str:
    with _pg_maintenance(db) as conn:
        if pg_database_exists(conn, db.name):
            return EXISTED
        template = template_source(conn) if template_source else None
        return _pg_create_database(conn, db, template)


def _pg_create_database(conn, db: AppDatabase, template: str | None) -> str:
    import psycopg
    from psycopg import errors, sql

    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db.name))
    if template:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    try:
        conn.execute(statement)
    except errors.InsufficientPrivilege:
        raise DatabaseError(
            f"database user {db.settings['USER']!r} may not create databases, so {db.label} "
            f"could not be created: create it (owned by that user) or grant the user CREATEDB"
        ) from None
    except (errors.DuplicateDatabase, errors.UniqueViolation):
        return EXISTED  # another environment created it a moment ago
    except psycopg.Error as error:
        if template and isinstance(error, (errors.ObjectInUse, errors.InvalidCatalogName)):
            # Someone is connected to the template, or an operator dropped it just now.
            log.warning("cloning %s from %s failed (%s): creating it empty", db.label, template, first_line(error))
            return _pg_create_database(conn, db, None)
        raise DatabaseError(f"could not create {db.label}: {first_line(error)}") from None
    log.info("created %s%s", db.label, f" from template {template}" if template else "")
    return CLONED if template else CREATED


def _pg_drop(db: AppDatabase) -> None:
    import psycopg
    from psycopg import sql

    with _pg_maintenance(db) as conn:
        try:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db.name)))
        except psycopg.Error as error:
            raise DatabaseError(f"could not drop {db.label}: {first_line(error)}") from None


def init_lock_key(database_name: str) -> int:
    """The PostgreSQL advisory-lock key that serialises initialisations of a database."""
    return advisory_key(f"appsup-init:{database_name}")


def advisory_key(text: str) -> int:
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def pg_advisory_lock(conn, key: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
        if time.monotonic() > deadline:
            raise DatabaseError(f"timed out after {timeout:g} s waiting for another {what}")
        time.sleep(LOCK_POLL)


@contextmanager
def _pg_lock(db: AppDatabase, timeout: float) -> Iterator[None]:
    # Session-level lock on this thread's connection to the app database, the one the
    # initialisation then uses: PostgreSQL frees it if this process dies, so a crash never
    # wedges the app, and no second connection is needed.
    connect(db)
    conn = connections[db.alias].connection
    key = init_lock_key(db.name)
    pg_advisory_lock(conn, key, timeout, f"initialisation of {db.label}")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # a broken connection has dropped the lock already
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def connect(db: AppDatabase) -> None:
    """Open this thread's connection to the registered ``db``; DatabaseError if impossible."""
    from django.db import OperationalError

    try:
        connections[db.alias].ensure_connection()
    except OperationalError as error:
        raise DatabaseError(f"cannot connect to {db.label}: {first_line(error)}") from None


def connects(db: AppDatabase) -> bool:
    """Whether this thread's connection to the registered ``db`` opens (the database may be
    missing, or the server down: the caller finds out which)."""
    try:
        connect(db)
    except DatabaseError:
        return False
    return True


def check_reachable(db: AppDatabase) -> set[tuple[str, str]]:
    """Whether this environment reaches the app's existing database, without registering it
    (a move's pre-check, command ``check``): the migrations applied there, or DatabaseError
    saying why not. PostgreSQL: a connection to it opens and answers; SQLite: its file is here
    (a SQLite app's data lives beside one environment only, so a move elsewhere cannot keep it)."""
    query = "SELECT app, name FROM django_migrations"
    if db.vendor == "sqlite":
        import sqlite3

        if not Path(db.name).is_file():
            raise DatabaseError(f"{db.label}: no such file here (SQLite data does not move between environments)")
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db.name}?mode=ro", uri=True)) as conn:
                return {(app, name) for app, name in conn.execute(query)}
        except sqlite3.Error as error:
            raise DatabaseError(f"cannot read {db.label}: {first_line(error)}") from None
    import psycopg

    try:
        with _pg_connect(db, db.name) as conn:
            return {(app, name) for app, name in conn.execute(query).fetchall()}
    except psycopg.errors.UndefinedTable:
        return set()  # created but never migrated: nothing this code could lack
    except psycopg.Error as error:
        raise DatabaseError(f"cannot connect to {db.label}: {first_line(error)}") from None


def migrations_unknown_here(applied: set[tuple[str, str]]) -> list[str]:
    """Migrations applied to an app's database that this environment's code does not have
    (its modules are older than the ones that migrated the data): ``["contacts.0004_x", …]``."""
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(None, ignore_no_migrations=True)
    known = set(loader.disk_migrations)
    return sorted(f"{app}.{name}" for app, name in applied if app in loader.migrated_apps and (app, name) not in known)


def size_bytes(db: AppDatabase) -> int:
    """The database's size on disk: ``pg_database_size`` on PostgreSQL (one short connection of
    its own, not a request's), the file and its write-ahead log on SQLite. DatabaseError if it
    cannot be measured."""
    if db.vendor == "sqlite":
        path = Path(db.name)
        try:
            size = path.stat().st_size
        except OSError as error:
            raise DatabaseError(f"cannot measure {db.label}: {error.strerror}") from None
        with contextlib.suppress(OSError):
            size += Path(f"{db.name}-wal").stat().st_size
        return size
    import psycopg

    try:
        with _pg_connect(db, db.name) as conn:
            return int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
    except psycopg.Error as error:
        raise DatabaseError(f"cannot measure {db.label}: {first_line(error)}") from None


# --- SQLite -----------------------------------------------------------------------------------


def _sqlite_create(db: AppDatabase, template_source: TemplateSource | None) -> str:
    path = Path(db.name)
    try:
        private_files.private_dir(path.parent)
        if path.exists():
            private_files.private_sqlite(path)  # one an earlier version left readable
            return EXISTED
        template = template_source(None) if template_source else None
        if not template:
            return CREATED  # SQLite creates the file on first connection
        # Copied under a temporary name, then linked into place: the link fails if another
        # process created the database meanwhile, and nobody ever sees half a copy.
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".clone-", suffix=".sqlite3") as copy_:
            with open(template, "rb") as source:
                shutil.copyfileobj(source, copy_)
            copy_.flush()
            try:
                os.link(copy_.name, path)
            except FileExistsError:
                return EXISTED
    except OSError as error:
        raise DatabaseError(f"cannot create {db.label}: {error.strerror}") from None
    log.info("created %s from template %s", db.label, template)
    return CLONED


@contextmanager
def _sqlite_lock(db: AppDatabase, timeout: float) -> Iterator[None]:
    # A file lock only protects processes on this machine: SQLite apps are not shared anyway.
    lock = FileLock(f"{db.name}.init-lock")
    if not lock.acquire(wait=timeout):
        raise DatabaseError(f"timed out after {timeout:g} s waiting for another initialisation of {db.label}")
    try:
        yield
    finally:
        lock.release()


def _sqlite_drop(db: AppDatabase) -> None:
    for suffix in ("", "-wal", "-shm", "-journal", ".init-lock"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{db.name}{suffix}")


# --- Public operations ------------------------------------------------------------------------


def ensure_exists(db: AppDatabase) -> bool:
    """Create the database (empty) if it is missing; True if this call created it."""
    return create(db) != EXISTED


def create(db: AppDatabase, template_source: TemplateSource | None = None) -> str:
    """Create the database if it is missing, as a copy of what ``template_source`` names
    (called with the server's maintenance connection, or None on SQLite) if it names one;
    returns ``EXISTED``, ``CREATED`` (empty) or ``CLONED``."""
    return _sqlite_create(db, template_source) if db.vendor == "sqlite" else _pg_create(db, template_source)


def drop(db: AppDatabase) -> None:
    """Delete the database and everything in it (this process's connections first)."""
    close(db.alias)
    if db.vendor == "sqlite":
        _sqlite_drop(db)
    else:
        _pg_drop(db)
    forget_cached_ids(db.alias)


@contextmanager
def init_lock(db: AppDatabase, timeout: float | None = None) -> Iterator[None]:
    timeout = settings.APP_CONFIG.start_timeout if timeout is None else timeout
    lock = _sqlite_lock if db.vendor == "sqlite" else _pg_lock
    with lock(db, timeout):
        yield
