"""Each hosted app's own database: where it is, creating it, locking and migrating it, dropping it.

Naming: on PostgreSQL the database ``<APP_DB_PREFIX><name>`` on this process's database server
(the ``DB_*`` settings), on SQLite the file ``<storage>/apps/<name>.sqlite3``. An app's options
may name another database: ``{"database": {"name": ..., "host": ..., "port": ..., "user": ...,
"password": ...}}`` (every key but ``name`` optional).

Initialisation (migrate + first data) runs under a lock that every environment sharing the app
sees: a PostgreSQL advisory lock taken on a connection to the app database itself, or an
exclusive file lock beside the SQLite file. Each initialisation leaves a row in the app
database's ``appsup_initialisation`` table (environment, pid, start, end), which is how the first
initialisation is recognised (an unfinished one is resumed) and how tests check that two never
overlap.

A new database is not migrated from scratch: it is cloned from a schema template, a database
(or SQLite file) migrated once per set of modules and migration graph (``CREATE DATABASE …
TEMPLATE``, a file copy inside PostgreSQL). Running the migrations is Python work in the
agent that used to dominate a first start; the clone leaves the agent free for other apps'
starts. Templates are rebuilt on demand, so dropping one is always safe.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import django
from django.apps import apps as global_apps
from django.conf import settings
from django.db import connections
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader

from worker_agent.db_router import APP_SHARED_LABELS, BUSINESS_LABELS, alias_for, set_enabled_modules

log = logging.getLogger(__name__)

INIT_TABLE = "appsup_initialisation"
MAINTENANCE_DB = "postgres"
# Explicit database names are quoted, but keep them to plain identifiers anyway.
DB_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
LOCK_POLL = 0.05
# What creating a database did: it was there already, it was created empty, or copied from
# the schema template.
EXISTED, CREATED, CLONED = "existed", "created", "cloned"


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
    unknown = sorted(set(modules) - BUSINESS_LABELS)
    if unknown:
        raise DatabaseError(
            f"unknown module(s) {', '.join(map(repr, unknown))}; available: {', '.join(sorted(BUSINESS_LABELS))}"
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
    raise DatabaseError(f"cannot connect to the database server for {db.label}: {_first_line(last_error)}")


def _first_line(error: object) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _pg_exists(conn, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def _pg_create(db: AppDatabase, modules: frozenset[str] | None) -> str:
    with _pg_maintenance(db) as conn:
        if _pg_exists(conn, db.name):
            return EXISTED
        template = _schema_template(_pg_template, conn, db, modules) if modules is not None else None
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
            log.warning("cloning %s from %s failed (%s): creating it empty", db.label, template, _first_line(error))
            return _pg_create_database(conn, db, None)
        raise DatabaseError(f"could not create {db.label}: {_first_line(error)}") from None
    log.info("created %s%s", db.label, f" from template {template}" if template else "")
    return CLONED if template else CREATED


def _pg_drop(db: AppDatabase) -> None:
    import psycopg
    from psycopg import sql

    with _pg_maintenance(db) as conn:
        try:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db.name)))
        except psycopg.Error as error:
            raise DatabaseError(f"could not drop {db.label}: {_first_line(error)}") from None


def init_lock_key(database_name: str) -> int:
    """The PostgreSQL advisory-lock key that serialises initialisations of a database."""
    return _advisory_key(f"appsup-init:{database_name}")


def _advisory_key(text: str) -> int:
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _pg_advisory_lock(conn, key: int, timeout: float, what: str) -> None:
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
    _pg_advisory_lock(conn, key, timeout, f"initialisation of {db.label}")
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
        raise DatabaseError(f"cannot connect to {db.label}: {_first_line(error)}") from None


def _connects(db: AppDatabase) -> bool:
    """Whether this thread's connection to the registered ``db`` opens (the database may be
    missing, or the server down: the caller finds out which)."""
    from django.db import OperationalError

    try:
        connections[db.alias].ensure_connection()
    except OperationalError:
        return False
    return True


# --- SQLite -----------------------------------------------------------------------------------


def _sqlite_create(db: AppDatabase, modules: frozenset[str] | None) -> str:
    path = Path(db.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            return EXISTED
        template = _schema_template(_sqlite_template, None, db, modules) if modules is not None else None
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
    with open(f"{db.name}.init-lock", "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DatabaseError(
                        f"timed out after {timeout:g} s waiting for another initialisation of {db.label}"
                    ) from None
                time.sleep(LOCK_POLL)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sqlite_drop(db: AppDatabase) -> None:
    for suffix in ("", "-wal", "-shm", "-journal", ".init-lock"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{db.name}{suffix}")


# --- Schema templates -------------------------------------------------------------------------

TEMPLATE_TIMEOUT = 120.0


@functools.cache
def expected_migrations(modules: frozenset[str]) -> frozenset[tuple[str, str]]:
    """Every migration (app label, name) an app database with ``modules`` must have."""
    labels = APP_SHARED_LABELS | modules
    graph = MigrationLoader(None, ignore_no_migrations=True).graph
    return frozenset(node for node in graph.nodes if node[0] in labels)


@functools.cache
def schema_digest(modules: frozenset[str]) -> str:
    """Identifies the schema a new database with ``modules`` gets: Django's version, the
    labels and every migration of theirs. Code with a new migration gets a new template."""
    labels = APP_SHARED_LABELS | modules
    payload = json.dumps([django.get_version(), sorted(labels), sorted(expected_migrations(modules))])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def template_name(modules: frozenset[str]) -> str:
    # App names start with a letter, so "<prefix>0…" is never an app database.
    return f"{settings.APP_CONFIG.app_db_prefix}0template_{schema_digest(modules)}"


def _migrate_template(db: AppDatabase, modules: frozenset[str]) -> None:
    register(db, modules)
    try:
        _migrate(db.alias, modules, first=True)
    finally:
        close(db.alias)


def _pg_template(conn, db: AppDatabase, modules: frozenset[str]) -> str:
    """The name of the module set's template on ``db``'s server (``conn``), built if missing."""
    from psycopg import sql

    name = template_name(modules)
    if _pg_exists(conn, name):
        return name
    key = _advisory_key(f"appsup-template:{name}")
    _pg_advisory_lock(conn, key, TEMPLATE_TIMEOUT, f"build of schema template {name}")
    try:
        if _pg_exists(conn, name):
            return name  # another process built it while we waited
        # Built under another name and renamed when complete: a template that exists is whole.
        building = f"{name}_building"
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(building)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(building)))
        settings_ = {**db.settings, "NAME": building}
        _migrate_template(AppDatabase(app=name, alias=alias_for(name), vendor=db.vendor, settings=settings_), modules)
        # PostgreSQL refuses to copy a database someone is connected to: let nobody connect.
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(building)))
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(building), sql.Identifier(name)))
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
    log.info("built schema template %s for modules %s", name, ", ".join(sorted(modules)) or "(none)")
    return name


def _sqlite_template(_conn: None, db: AppDatabase, modules: frozenset[str]) -> str:
    folder = Path(db.name).parent / ".templates"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{template_name(modules)}.sqlite3"
    if path.exists():
        return str(path)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.exists():
                return str(path)
            building = Path(f"{path}.building")
            building.unlink(missing_ok=True)
            # Without the WAL journal mode: the template must be one self-contained file to copy.
            options = {k: v for k, v in db.settings.get("OPTIONS", {}).items() if k != "init_command"}
            settings_ = {**db.settings, "NAME": str(building), "OPTIONS": options}
            _migrate_template(
                AppDatabase(app=path.stem, alias=alias_for(path.stem), vendor=db.vendor, settings=settings_), modules
            )
            os.replace(building, path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    log.info("built schema template %s for modules %s", path, ", ".join(sorted(modules)) or "(none)")
    return str(path)


def _schema_template(build, conn, db: AppDatabase, modules: frozenset[str]) -> str | None:
    """The template to create ``db`` from, or None to create it empty and migrate it (the
    template could not be built: the reason is logged, the start goes on without it)."""
    try:
        return build(conn, db, modules)
    except Exception:
        log.warning("no schema template for %s: it will be migrated from scratch", db.label, exc_info=True)
        return None


# --- Public operations ------------------------------------------------------------------------


def ensure_exists(db: AppDatabase, modules: frozenset[str] | None = None) -> bool:
    """Create the database if it is missing, from the schema template of ``modules`` when
    given (else empty); True if this call created it."""
    return _create(db, modules) != EXISTED


def _create(db: AppDatabase, modules: frozenset[str] | None) -> str:
    return _sqlite_create(db, modules) if db.vendor == "sqlite" else _pg_create(db, modules)


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


def _ensure_init_table(cursor) -> None:
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS {INIT_TABLE} ("
        " token varchar(32) NOT NULL,"
        " environment varchar(40) NOT NULL,"
        " pid integer NOT NULL,"
        " first_init boolean NOT NULL,"
        " migrations_applied integer NOT NULL DEFAULT 0,"
        " started_at double precision NOT NULL,"
        " finished_at double precision)"
    )


def initialisations(alias: str) -> list[dict]:
    """Every initialisation recorded in the app database, oldest first."""
    with connections[alias].cursor() as cursor:
        _ensure_init_table(cursor)
        cursor.execute(
            f"SELECT environment, pid, first_init, migrations_applied, started_at, finished_at"  # noqa: S608
            f" FROM {INIT_TABLE} ORDER BY started_at"
        )
        columns = ("environment", "pid", "first", "migrations_applied", "started_at", "finished_at")
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def _applied_migrations(alias: str) -> frozenset[tuple[str, str]] | None:
    """The migrations recorded in the database; None if it has no migration table yet."""
    from django.db import DatabaseError as DjangoDatabaseError

    try:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT app, name FROM django_migrations")
            return frozenset(cursor.fetchall())
    except DjangoDatabaseError:
        return None


def _migrate(alias: str, modules: frozenset[str], first: bool, cloned: bool = False) -> int:
    """Apply the missing migrations of Django's own apps and the enabled modules; return how
    many this initialisation put in place: on the first one, all of them, whether applied here
    or brought by the schema template (``cloned``: permissions and content types came with it)."""
    from django.contrib.auth.management import create_permissions

    connection = connections[alias]
    labels = APP_SHARED_LABELS | modules
    expected = expected_migrations(modules)
    applied = _applied_migrations(alias)
    # The usual case, every start but an upgrade's: one query instead of building Django's
    # migration plan (which lists every table of the database first).
    up_to_date = applied is not None and expected <= applied
    if up_to_date and (cloned or not first):
        return len(expected) if first else 0
    executor = MigrationExecutor(connection)
    targets = [node for node in executor.loader.graph.leaf_nodes() if node[0] in labels]
    plan = executor.migration_plan(targets)
    if plan:
        executor.migrate(targets, plan=plan)
    if plan or first:
        # What `migrate`'s post_migrate would do, limited to this app's own labels (the
        # registry's models get no content types or permissions in an app database).
        for app_config in global_apps.get_app_configs():
            if app_config.label in labels and app_config.models_module is not None:
                create_permissions(app_config, verbosity=0, interactive=False, using=alias, apps=global_apps)
    if first:
        return sum(1 for node in executor.loader.graph.nodes if node[0] in labels)
    return len(plan)


def _seed_admin(alias: str, initial_admin: dict) -> None:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import identify_hasher

    username = str(initial_admin.get("username") or "").strip()
    password_hash = str(initial_admin.get("password_hash") or "")
    if not username:
        raise DatabaseError("options.initial_admin.username is empty")
    try:
        identify_hasher(password_hash)
    except ValueError:
        raise DatabaseError(
            "options.initial_admin.password_hash is not a Django password hash (plain passwords are refused)"
        ) from None
    user_model = get_user_model()
    manager = user_model._default_manager.db_manager(alias)
    if manager.filter(username=username).exists():
        return
    user = user_model(username=username, is_staff=True, is_superuser=True, is_active=True)
    user.password = password_hash
    user.save(using=alias)


def initialise(db: AppDatabase, modules: frozenset[str], initial_admin: dict | None, environment: str) -> dict:
    """Create (if needed, from the schema template), lock, migrate and seed ``db``; return what
    was done."""
    register(db, modules)
    # The app's database usually exists (every start but the first on any environment), so
    # connect to it first and go through the server's maintenance database only when missing.
    how = EXISTED
    if db.vendor == "sqlite" or not _connects(db):
        how = _create(db, modules)
        forget_cached_ids(db.alias)
    connection = connections[db.alias]
    try:
        with init_lock(db):
            token = secrets.token_hex(8)
            with connection.cursor() as cursor:
                _ensure_init_table(cursor)
                cursor.execute(f"SELECT count(*) FROM {INIT_TABLE} WHERE finished_at IS NOT NULL")  # noqa: S608
                first = cursor.fetchone()[0] == 0
                cursor.execute(
                    f"INSERT INTO {INIT_TABLE} (token, environment, pid, first_init, started_at)"  # noqa: S608
                    " VALUES (%s, %s, %s, %s, %s)",
                    (token, environment, os.getpid(), first, time.time()),
                )
            applied = _migrate(db.alias, modules, first, cloned=how == CLONED)
            if first and initial_admin:
                _seed_admin(db.alias, initial_admin)
            with connection.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {INIT_TABLE} SET finished_at = %s, migrations_applied = %s WHERE token = %s",  # noqa: S608
                    (time.time(), applied, token),
                )
    except DatabaseError:
        raise
    except Exception as error:
        log.exception("initialisation of %s failed", db.label)
        raise DatabaseError(f"initialising {db.label} failed: {type(error).__name__}: {_first_line(error)}") from None
    finally:
        close(db.alias)
    return {"created": how != EXISTED, "cloned": how == CLONED, "first": first, "migrations_applied": applied}
