"""Secrets at rest: a real run of each role leaves its storage directories 0700 and its SQLite
databases (the supervisor's registry, an app's own database) and their journal files 0600, and
tightens what an earlier version left readable."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from tests.support import services
from tests.support.processes import PYTHON, ROOT


def manage(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """``manage.py`` started as a shell would start it, with the usual umask 022 (this test
    process has the project's 077 already: inheriting it would prove nothing)."""
    return subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.umask(0o022),  # noqa: PLW1509 (no threads touch state before exec)
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sqlite_environ(storage: Path, **extra: str) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",
        "SECRET_KEY": "test-secret-key-not-for-production",
        "DEBUG": "false",
        "DB_DIALECT": "sqlite",
        "DB_STORAGE": "",
        "APP_STORAGE_DIR": str(storage),
        **extra,
    }


def everything_under(root: Path) -> tuple[list[Path], list[Path]]:
    paths = [root, *root.rglob("*")]
    return [p for p in paths if p.is_dir()], [p for p in paths if p.is_file()]


def test_the_supervisors_storage_and_database_are_private(tmp_path):
    storage = tmp_path / "supervisor"
    # As an earlier version left it: a world-readable folder and database.
    storage.mkdir(mode=0o755)
    storage.chmod(0o755)
    old = storage / "db.sqlite3"
    old.touch()
    old.chmod(0o644)
    environ = sqlite_environ(storage, APP_MODE="standalone", ADMIN_PASSWORD="pw-at-rest")
    result = manage(["migrate", "-v0"], environ)
    assert result.returncode == 0, result.stderr
    result = manage(["ensure_admin"], environ)  # a password hash and a session table in the file
    assert result.returncode == 0, result.stderr

    assert mode(storage) == 0o700
    databases = [p for p in storage.iterdir() if p.name.startswith("db.sqlite3")]
    assert storage / "db.sqlite3" in databases
    for path in databases:  # the database, and its -wal/-shm while they exist
        assert mode(path) == 0o600, (path, oct(mode(path)))


def test_an_apps_own_database_and_the_workers_files_are_private(tmp_path):
    storage = tmp_path / "worker"
    environ = sqlite_environ(
        storage,
        APP_MODE="worker",
        APP_SUPERVISOR_REDIS_URL=services.redis_url(),
        APP_COMMAND_REDIS_URL=services.redis_url(),
        APP_REDIS_PREFIX=services.RUN_ID,
        ENVIRONMENT_NAME="env_files",
        ENVIRONMENT_URL="http://127.0.0.1:9",
        DB_STORAGE=str(storage / "own" / "db.sqlite3"),
    )
    result = manage(["migrate", "-v0"], environ)
    assert result.returncode == 0, result.stderr
    result = manage(
        ["host_app", "rt_files", "--modules", "contacts", "--admin-user", "alice", "--admin-password", "pw"], environ
    )
    assert result.returncode == 0, result.stderr

    app_db = storage / "apps" / "rt_files.sqlite3"
    assert app_db.exists()
    directories, files = everything_under(storage)
    assert {p: oct(mode(p)) for p in directories if mode(p) != 0o700} == {}
    assert {p: oct(mode(p)) for p in files if mode(p) & 0o077} == {}

    # An app database an earlier version left readable is tightened when it is opened again.
    app_db.chmod(0o644)
    (storage / "apps").chmod(0o755)
    result = manage(["host_app", "rt_files", "--modules", "contacts"], environ)
    assert result.returncode == 0, result.stderr
    assert mode(app_db) == 0o600
    assert mode(storage / "apps") == 0o700
