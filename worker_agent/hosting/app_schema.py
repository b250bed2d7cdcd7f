"""What an app database holds and how it gets it: migrations, and schema templates.

An app database carries Django's auth, contenttypes, sessions and admin tables plus those of the
business modules the app enables (``db_router``). A new one is not migrated from scratch: it is
a copy of a schema template, a database (or SQLite file) migrated once per set of modules and
migration graph (``CREATE DATABASE … TEMPLATE``, a file copy inside PostgreSQL). Running the
migrations is Python work in the agent that used to dominate a first start. Templates are
rebuilt on demand, so dropping one is always safe (docs/hosting.md, "Schema templates").
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path

import django
from django.apps import apps as global_apps
from django.conf import settings
from django.db import connections
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader

from worker_agent.hosting import app_databases as dbs
from worker_agent.hosting.db_router import APP_SHARED_LABELS, alias_for
from worker_agent.hosting.file_lock import file_lock

log = logging.getLogger(__name__)

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


def _migrate_template(db: dbs.AppDatabase, modules: frozenset[str]) -> None:
    dbs.register(db, modules)
    try:
        migrate(db.alias, modules, first=True)
    finally:
        dbs.close(db.alias)


def build_pg_template(conn, db: dbs.AppDatabase, modules: frozenset[str]) -> str:
    """The name of the module set's template on ``db``'s server (``conn``), built if missing."""
    from psycopg import sql

    name = template_name(modules)
    if dbs.pg_database_exists(conn, name):
        return name
    key = dbs.advisory_key(f"appsup-template:{name}")
    dbs.pg_advisory_lock(conn, key, TEMPLATE_TIMEOUT, f"build of schema template {name}")
    try:
        if dbs.pg_database_exists(conn, name):
            return name  # another process built it while we waited
        # Built under another name and renamed when complete: a template that exists is whole.
        building = f"{name}_building"
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(building)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(building)))
        settings_ = {**db.settings, "NAME": building}
        _migrate_template(
            dbs.AppDatabase(app=name, alias=alias_for(name), vendor=db.vendor, settings=settings_), modules
        )
        # PostgreSQL refuses to copy a database someone is connected to: let nobody connect.
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(building)))
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(building), sql.Identifier(name)))
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
    log.info("built schema template %s for modules %s", name, ", ".join(sorted(modules)) or "(none)")
    return name


def build_sqlite_template(db: dbs.AppDatabase, modules: frozenset[str]) -> str:
    folder = Path(db.name).parent / ".templates"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{template_name(modules)}.sqlite3"
    if path.exists():
        return str(path)
    with file_lock(f"{path}.lock"):
        if path.exists():
            return str(path)
        building = Path(f"{path}.building")
        building.unlink(missing_ok=True)
        # Without the WAL journal mode: the template must be one self-contained file to copy.
        options = {k: v for k, v in db.settings.get("OPTIONS", {}).items() if k != "init_command"}
        settings_ = {**db.settings, "NAME": str(building), "OPTIONS": options}
        _migrate_template(
            dbs.AppDatabase(app=path.stem, alias=alias_for(path.stem), vendor=db.vendor, settings=settings_),
            modules,
        )
        os.replace(building, path)
    log.info("built schema template %s for modules %s", path, ", ".join(sorted(modules)) or "(none)")
    return str(path)


def template_source(db: dbs.AppDatabase, modules: frozenset[str]) -> dbs.TemplateSource:
    """What ``app_databases.create`` asks for the template to copy ``db`` from: the module
    set's template, built if missing, or None to create it empty and migrate it (the template
    could not be built: the reason is logged, the start goes on without it)."""

    def source(conn) -> str | None:
        try:
            if db.vendor == "sqlite":
                return build_sqlite_template(db, modules)
            return build_pg_template(conn, db, modules)
        except Exception:
            log.warning("no schema template for %s: it will be migrated from scratch", db.label, exc_info=True)
            return None

    return source


def applied_migrations(alias: str) -> frozenset[tuple[str, str]] | None:
    """The migrations recorded in the database; None if it has no migration table yet."""
    from django.db import DatabaseError as DjangoDatabaseError

    try:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT app, name FROM django_migrations")
            return frozenset(cursor.fetchall())
    except DjangoDatabaseError:
        return None


def migrate(alias: str, modules: frozenset[str], first: bool, cloned: bool = False) -> int:
    """Apply the missing migrations of Django's own apps and the enabled modules; return how
    many this initialisation put in place: on the first one, all of them, whether applied here
    or brought by the schema template (``cloned``: permissions and content types came with it)."""
    from django.contrib.auth.management import create_permissions

    connection = connections[alias]
    labels = APP_SHARED_LABELS | modules
    expected = expected_migrations(modules)
    applied = applied_migrations(alias)
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
    return len(expected) if first else len(plan)
