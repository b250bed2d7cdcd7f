"""Initialising a hosted app on this environment: its database, schema and first data.

Runs under the app's initialisation lock (``app_databases.init_lock``), so environments sharing
the app never initialise it at once. Each initialisation leaves a row in the app database's
``appsup_initialisation`` table (environment, pid, start, end, migrations put in place), which
is how the first initialisation is recognised (an unfinished one is resumed) and how tests
check that two never overlap.
"""

from __future__ import annotations

import logging
import os
import secrets
import time

from django.db import connections

from worker_agent.hosting import app_databases as dbs
from worker_agent.hosting import app_schema

log = logging.getLogger(__name__)

INIT_TABLE = "appsup_initialisation"


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


def _seed_admin(alias: str, initial_admin: dict) -> None:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import identify_hasher

    username = str(initial_admin.get("username") or "").strip()
    password_hash = str(initial_admin.get("password_hash") or "")
    if not username:
        raise dbs.DatabaseError("options.initial_admin.username is empty")
    try:
        identify_hasher(password_hash)
    except ValueError:
        raise dbs.DatabaseError(
            "options.initial_admin.password_hash is not a Django password hash (plain passwords are refused)"
        ) from None
    user_model = get_user_model()
    manager = user_model._default_manager.db_manager(alias)
    if manager.filter(username=username).exists():
        return
    user = user_model(username=username, is_staff=True, is_superuser=True, is_active=True)
    user.password = password_hash
    user.save(using=alias)


def initialise(db: dbs.AppDatabase, modules: frozenset[str], initial_admin: dict | None, environment: str) -> dict:
    """Create (if needed, from the schema template), lock, migrate and seed ``db``; return what
    was done."""
    dbs.register(db, modules)
    # The app's database usually exists (every start but the first on any environment), so
    # connect to it first and go through the server's maintenance database only when missing.
    how = dbs.EXISTED
    if db.vendor == "sqlite" or not dbs.connects(db):
        how = dbs.create(db, app_schema.template_source(db, modules))
        dbs.forget_cached_ids(db.alias)
    connection = connections[db.alias]
    try:
        with dbs.init_lock(db):
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
            applied = app_schema.migrate(db.alias, modules, first, cloned=how == dbs.CLONED)
            if first and initial_admin:
                _seed_admin(db.alias, initial_admin)
            with connection.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {INIT_TABLE} SET finished_at = %s, migrations_applied = %s WHERE token = %s",  # noqa: S608
                    (time.time(), applied, token),
                )
    except dbs.DatabaseError:
        raise
    except Exception as error:
        log.exception("initialisation of %s failed", db.label)
        raise dbs.DatabaseError(
            f"initialising {db.label} failed: {type(error).__name__}: {dbs.first_line(error)}"
        ) from None
    finally:
        dbs.close(db.alias)
    return {"created": how != dbs.EXISTED, "cloned": how == dbs.CLONED, "first": first, "migrations_applied": applied}
