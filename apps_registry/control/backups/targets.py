"""Where an app's data is, by the rule the workers use: its database (``app_databases.describe``:
``<APP_DB_PREFIX><name>`` on the ``DB_*`` server, or the app's ``options.database``; a SQLite
file under the storage folder) and its uploads (``<APP_MEDIA_DIR>/<name>/``).

The one import of worker_agent besides the local runner (pyproject.toml allows it): a second
copy of the naming rule could drift from the one the workers follow."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from django.conf import settings

from worker_agent.hosting import app_databases
from worker_agent.hosting.app_databases import AppDatabase, DatabaseError

__all__ = ["AppDatabase", "DatabaseError", "app_database", "media_root", "scratch_database"]


def app_database(name: str, options: dict | None) -> AppDatabase:
    return app_databases.describe(name, options)


def media_root(name: str) -> Path:
    return Path(settings.APP_CONFIG.media_dir) / name


def scratch_database(db: AppDatabase, suffix: str) -> AppDatabase:
    """A database beside ``db`` on the same server (or folder) for a restore drill."""
    scratch = dict(db.settings)
    if db.vendor == "sqlite":
        scratch["NAME"] = str(Path(db.name).with_name(f"drill_{suffix}.sqlite3"))
    else:
        scratch["NAME"] = f"{settings.APP_CONFIG.app_db_prefix}drill_{suffix}"[:63]
    return dataclasses.replace(db, app=f"drill_{suffix}", alias=f"drill:{suffix}", settings=scratch)


def create_empty(db: AppDatabase) -> None:
    """A fresh empty database in place of ``db`` (dropped first if it exists)."""
    app_databases.drop(db)
    app_databases.create(db)


def drop(db: AppDatabase) -> None:
    app_databases.drop(db)
