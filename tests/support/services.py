"""The real services the tests use, and the names that keep one run's data apart.

PostgreSQL and Redis are the machine's, on loopback. Each test run uses its own key
prefix and database-name prefix (``RUN_ID``) and a dedicated Redis database number that
it refuses to use when something else left data there.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

REDIS_HOST = os.environ.get("TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("TEST_REDIS_PORT", "6379"))
REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "13"))
PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TEST_PG_USER", "postgres")

# Marks a Redis database as ours, so that a crashed earlier run's leftovers may be cleared
# while anybody else's data makes the run stop.
OWNER_KEY = "app-supervisor-tests:owner"

# One id per test session, shared with subprocesses through the environment.
RUN_ID = os.environ.setdefault("APP_TEST_RUN_ID", "t" + secrets.token_hex(3))


def redis_url(db: int = REDIS_DB) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def supervisor_test_environ() -> dict[str, str]:
    return {
        "APP_MODE": "supervisor",
        "SECRET_KEY": "test-secret-key-not-for-production",
        "DEBUG": "false",
        "ALLOWED_HOSTS": "*",
        "DB_DIALECT": "postgres",
        "DB_HOST": PG_HOST,
        "DB_PORT": str(PG_PORT),
        "DB_USER": PG_USER,
        "DB_DATABASE": f"{RUN_ID}_supervisor",
        "APP_SUPERVISOR_REDIS_URL": redis_url(),
        "APP_COMMAND_REDIS_URL": redis_url(),
        "APP_REDIS_PREFIX": RUN_ID,
        "APP_DB_PREFIX": f"{RUN_ID}_",
        "APP_STORAGE_DIR": str(storage_dir()),
        # Uploads in one folder for every process of the run, as environments sharing an app
        # share it in production (and the queue worker that backs it up reads it).
        "APP_MEDIA_DIR": str(storage_dir() / "media"),
        # No scheduled backups or drills unless a test asks: they would queue jobs everywhere.
        "APP_BACKUP_INTERVAL": "0",
        "APP_BACKUP_DRILL_INTERVAL": "0",
        # One supervisor key for the test process and the cluster's supervisor: both send
        # commands to the same workers (tests/support/identity.py).
        "SUPERVISOR_KEY": "dGVzdC1zdXBlcnZpc29yLWtleS0zMi1ieXRlcy0hISE=",
    }


def storage_dir() -> Path:
    """Files of this run (SQLite databases, runtime state, uploads), outside the work tree."""
    return Path(tempfile.gettempdir()) / "app-supervisor-tests" / RUN_ID


def claim_redis_db(db: int = REDIS_DB) -> None:
    """Make sure this Redis database is ours to use: empty, or left over from our own tests."""
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    if client.dbsize() and not client.exists(OWNER_KEY):
        raise SystemExit(
            f"Redis {REDIS_HOST}:{REDIS_PORT} database {db} holds data the tests did not create; "
            f"empty it or set TEST_REDIS_DB to a free database number"
        )
    client.flushdb()
    client.set(OWNER_KEY, RUN_ID)


def release_redis_db(db: int = REDIS_DB) -> None:
    import shutil

    import redis

    redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db).flushdb()
    shutil.rmtree(storage_dir(), ignore_errors=True)


def drop_run_databases() -> None:
    """Drop every PostgreSQL database this run created (app databases included)."""
    import psycopg

    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s OR datname LIKE %s",
                (f"{RUN_ID}\\_%", f"test\\_{RUN_ID}\\_%"),
            )
        ]
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
