"""Where the local cluster keeps its files, on which ports it runs, and each role's
environment variables (scripts/cluster.py)."""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path

from cluster_children import port_setting
from cluster_redis import ClusterRedis

ROOT = Path(__file__).resolve().parent.parent


class ClusterConfig:
    """The cluster's settings, from CLUSTER_* and the document's variables; Cluster adds the processes."""

    def __init__(self) -> None:
        self.dir = Path(os.environ.get("CLUSTER_DIR") or ROOT / "storage" / "cluster").resolve()
        self.ports = {
            "supervisor": port_setting("CLUSTER_SUPERVISOR_PORT", 14000),
            "env_a": port_setting("CLUSTER_ENV_A_PORT", 15000),
            "env_b": port_setting("CLUSTER_ENV_B_PORT", 16000),
        }
        self.external_redis = os.environ.get("APP_SUPERVISOR_REDIS_URL") or os.environ.get("APP_COMMAND_REDIS_URL")
        self.redis_port = port_setting("CLUSTER_REDIS_PORT", 14379)
        # The Redis the cluster starts itself has a user per role (AUTH and ACLs, no default
        # user); an external one (APP_*_REDIS_URL) is used as given.
        self.redis = ClusterRedis(self.dir / "redis", self.redis_port, os.environ.get("APP_REDIS_PREFIX") or "appsup")
        self.postgres = os.environ.get("DB_DIALECT", "").strip() == "postgres"

    # --- Configuration -----------------------------------------------------------------

    def secret_key(self) -> str:
        if os.environ.get("SECRET_KEY"):
            return os.environ["SECRET_KEY"]
        path = self.dir / "secret_key"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(50))
            path.chmod(0o600)
        return path.read_text().strip()

    def base_env(self, role: str = "supervisor") -> dict[str, str]:
        redis_url = self.external_redis or self.redis.url(role)
        env = {
            "APP_CLUSTER_DIR": str(self.dir),
            "SECRET_KEY": self.secret_key(),
            "DEBUG": os.environ.get("DEBUG", "false"),
            "ALLOWED_HOSTS": os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]"),
            # Every app on an origin of its own: browsers resolve *.localhost to loopback
            # (APPS_DOMAIN= empty gives path mode, /apps/<name>/ on the supervisor's host).
            "APPS_DOMAIN": os.environ.get("APPS_DOMAIN", "apps.localhost"),
            "APP_SUPERVISOR_REDIS_URL": os.environ.get("APP_SUPERVISOR_REDIS_URL") or redis_url,
            "APP_COMMAND_REDIS_URL": os.environ.get("APP_COMMAND_REDIS_URL") or redis_url,
            "METRICS_ALLOWED_IPS": os.environ.get("METRICS_ALLOWED_IPS", "127.0.0.1,::1"),
            "PYTHONUNBUFFERED": "1",
        }
        if self.postgres:
            env["DB_DIALECT"] = "postgres"
        return env

    def role_env(self, role: str) -> dict[str, str]:
        env = self.base_env(role)
        prefix = os.environ.get("DB_DATABASE") or "appsup"
        if not re.match(r"^[a-z][a-z0-9_]{0,40}$", prefix):
            raise SystemExit(
                f"DB_DATABASE is the cluster's database name prefix: lowercase letters, digits, _ (got {prefix!r})"
            )
        metrics_dir = self.dir / role / "metrics"
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        if role == "supervisor":
            env.update(
                APP_MODE="supervisor",
                APP_STORAGE_DIR=str(self.dir / "supervisor"),
                DB_STORAGE=str(self.dir / "supervisor" / "db.sqlite3"),
            )
        else:
            # Both workers share one storage directory: the apps' SQLite files and the
            # per-environment runtime state files (named after the environment) live there.
            port = self.ports[role]
            env.update(
                APP_MODE="worker",
                ENVIRONMENT_NAME=role,
                ENVIRONMENT_URL=f"http://127.0.0.1:{port}",
                APP_STORAGE_DIR=str(self.dir / "workers"),
                DB_STORAGE=str(self.dir / role / "db.sqlite3"),
            )
        if self.postgres:
            env["DB_DATABASE"] = f"{prefix}_{role}"
        return env

    def prepare_dirs(self) -> None:
        for sub in ("supervisor", "workers", "env_a", "env_b", "redis"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        for role in ("supervisor", "env_a", "env_b"):
            # Stale per-process files from a previous run would be summed into this one's.
            metrics_dir = self.dir / role / "metrics"
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir(parents=True)
        for storage in ("supervisor", "workers"):
            (self.dir / storage / "static").mkdir(exist_ok=True)

    def gunicorn_env(self, role: str) -> dict[str, str]:
        return {
            "GUNICORN_BIND": f"127.0.0.1:{self.ports[role]}",
            "GUNICORN_WORKERS": os.environ.get("CLUSTER_WEB_WORKERS", "2"),
            "GUNICORN_THREADS": "4",
            "GUNICORN_GRACEFUL_TIMEOUT": "5",
            "GUNICORN_ACCESS_LOG": "off",  # the console shows the apps' own log lines
        }
