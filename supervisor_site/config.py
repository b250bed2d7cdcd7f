"""Typed, validated configuration read from environment variables.

Everything App Supervisor reads from the environment is parsed here, once, into
``Config``. ``settings.py`` turns it into Django settings. A bad value raises
``ConfigError`` whose message names the variable, so start-up can fail with one
line instead of a traceback from deep inside Django.
"""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from apps_registry import signing
from apps_registry.names import host_problem, is_valid_name, normalise_host
from supervisor_site.allowed_networks import AllowedNetworks
from supervisor_site.origins import origin_problem
from supervisor_site.secret_urls import masked

MODES = ("standalone", "supervisor", "worker")
ADAPTERS = ("local", "remote")
COMMAND_ADAPTERS = ("redis",)
DB_DIALECTS = ("postgres", "sqlite")
LOG_FORMATS = ("text", "json")

# The document's tables: what each role uses when the variable is not set.
MODE_DEFAULTS = {
    "standalone": {"discovery": "local", "process": "local", "command": ""},
    "supervisor": {"discovery": "remote", "process": "remote", "command": "redis"},
    "worker": {"discovery": "remote", "process": "local", "command": "redis"},
}

REDIS_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,40}$")


class ConfigError(Exception):
    """A configuration value is missing or wrong; the message names the variable."""


@dataclass(frozen=True)
class DatabaseConfig:
    dialect: str
    host: str
    port: int
    name: str
    user: str
    password: str
    sqlite_path: Path


@dataclass(frozen=True)
class Config:
    mode: str
    discovery_adapter: str
    process_adapter: str
    command_adapter: str
    supervisor_redis_url: str
    command_redis_url: str
    redis_prefix: str
    environment_name: str
    environment_url: str
    environment_proxy_url: str
    database: DatabaseConfig
    storage_dir: Path
    app_db_prefix: str
    secret_key: str
    debug: bool
    allowed_hosts: list[str]
    time_zone: str
    heartbeat_interval: float
    lease_interval: float
    offline_after: float
    # An environment offline this long makes its failover apps start elsewhere (≥ 2 × offline_after).
    failover_grace: float
    command_ttl: float
    command_concurrency: int
    start_timeout: float
    start_lock_ttl: float
    # Moves and drains (control/lifecycle): how long the source keeps serving after a move's
    # switch (proxies' route caches expire, requests in flight finish), and how many apps a
    # drain moves at once.
    move_drain_seconds: float
    drain_concurrency: int
    reconcile_interval: float
    events_group: str
    proxy_connect_timeout: float
    proxy_read_timeout: float
    proxy_pool_size: int
    proxy_max_upload_bytes: int
    proxy_route_cache_seconds: float
    proxy_concurrency: int
    proxy_app_concurrency: int
    # Hosted requests at once per web process of a worker or standalone (HOSTED_CONCURRENCY):
    # each may hold a database connection, so this bounds them (docs/architecture.md).
    hosted_concurrency: int
    hosted_app_concurrency: int
    trusted_proxies: list[str]
    # Where environments' URLs may point (ENVIRONMENT_ALLOWED_NETWORKS; empty: anywhere).
    environment_allowed_networks: AllowedNetworks
    metrics_token: str
    metrics_allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    log_format: str
    log_level: str
    # Identity (docs/security.md): this worker's signing key, the supervisor's, and whether new
    # environments wait for an operator's approval.
    environment_key: str = ""
    supervisor_key: str = ""
    supervisor_public_key: str = ""
    environment_approval: bool = False
    login_failure_limit: int = 10
    login_lockout_seconds: float = 900.0
    https: bool = False
    # Per-app origins: app crm at crm.<apps_domain> ('' = path mode only, /apps/<name>/).
    apps_domain: str = ""
    # Recent log lines kept per app and environment (worker_agent/hosting/app_logs.py).
    app_log_lines: int = 500
    # Per-app backups (apps_registry/control/backups): the directory store, or an S3 bucket.
    backup_dir: Path = Path("storage/backups")
    backup_s3_bucket: str = ""
    backup_s3_prefix: str = ""
    backup_s3_endpoint: str = ""
    # Scheduled backups every this many seconds per app (0: none), keeping this many; drills.
    backup_interval: float = 86400.0
    backup_keep: int = 7
    backup_drill_interval: float = 86400.0
    # Where hosted apps keep their uploads, one folder per app (shared by the environments
    # running an app and by the queue worker that backs it up).
    media_dir: Path = Path("storage/media")
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def uses_redis(self) -> bool:
        return bool(self.supervisor_redis_url or self.command_redis_url)


class _Reader:
    """Small helpers that read one variable and name it in every error."""

    def __init__(self, environ: Mapping[str, str]):
        self.environ = environ

    def raw(self, name: str) -> str:
        return self.environ.get(name, "").strip()

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.raw(name) or default
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)} (got {value!r})")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name).lower()
        if not value:
            return default
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false (got {value!r})")

    def integer(self, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        value = self.raw(name)
        if not value:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number (got {value!r})") from None
        if number < minimum or (maximum is not None and number > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise ConfigError(f"{name} must be at least {minimum}{upper} (got {number})")
        return number

    def seconds(self, name: str, default: float, minimum: float = 0.01) -> float:
        value = self.raw(name)
        if not value:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number of seconds (got {value!r})") from None
        if not number >= minimum:
            raise ConfigError(f"{name} must be at least {minimum} seconds (got {value!r})")
        return number

    def origin(self, name: str, required: bool = False) -> str:
        """An http(s) origin (supervisor_site.origins), without its trailing slash."""
        value = self.raw(name)
        if not value:
            if required:
                raise ConfigError(f"{name} is required here: an http(s) origin such as http://worker-a:15000")
            return ""
        problem = origin_problem(value)
        if problem:
            raise ConfigError(f"{name} {problem} (got {value!r})")
        return value.rstrip("/")

    def url(self, name: str, schemes: tuple[str, ...], required: bool = False) -> str:
        value = self.raw(name)
        if not value:
            if required:
                raise ConfigError(f"{name} is required here: a {'/'.join(schemes)} URL")
            return ""
        try:
            parts = urlsplit(value)
            port = parts.port  # raises ValueError on a non-numeric port
        except ValueError:
            raise ConfigError(f"{name} is not a valid URL (got {masked(value)!r})") from None
        if parts.scheme not in schemes or not parts.hostname:
            expected = " or ".join(f"{s}://host[:port]" for s in schemes)
            raise ConfigError(f"{name} must look like {expected} (got {masked(value)!r})")
        del port
        return value.rstrip("/") if parts.scheme in ("http", "https") else value

    def identifier(self, name: str, default: str = "", required: bool = False) -> str:
        value = self.raw(name) or default
        if not value:
            if required:
                raise ConfigError(f"{name} is required here: an identifier such as env_a")
            return ""
        if not is_valid_name(value):
            raise ConfigError(
                f"{name} must start with a lowercase letter, then lowercase letters, digits "
                f"or _, at most 40 characters (got {value!r})"
            )
        return value

    def csv(self, name: str, default: str) -> list[str]:
        value = self.raw(name) or default
        return [item.strip() for item in value.split(",") if item.strip()]


def _command_adapter(read: _Reader, default: str) -> str:
    correct = read.raw("APP_COMMAND_ADAPTER")
    misspelt = read.raw("APP_COMMAND_ADPATER")  # the document's own spelling
    if correct and misspelt and correct != misspelt:
        raise ConfigError(
            "APP_COMMAND_ADAPTER and APP_COMMAND_ADPATER are both set and differ "
            f"({correct!r} vs {misspelt!r}); set only one"
        )
    name = "APP_COMMAND_ADAPTER" if correct or not misspelt else "APP_COMMAND_ADPATER"
    value = correct or misspelt or default
    if value and value not in COMMAND_ADAPTERS:
        raise ConfigError(f"{name} must be redis (got {value!r})")
    return value


def _database(read: _Reader, storage_dir: Path) -> DatabaseConfig:
    dialect = read.choice("DB_DIALECT", DB_DIALECTS, "sqlite")
    sqlite_path = Path(read.raw("DB_STORAGE") or storage_dir / "db.sqlite3")
    name = read.raw("DB_DATABASE")
    if dialect == "postgres" and not name:
        raise ConfigError("DB_DATABASE is required when DB_DIALECT=postgres: a database name")
    return DatabaseConfig(
        dialect=dialect,
        host=read.raw("DB_HOST") or "127.0.0.1",
        port=read.integer("DB_PORT", 5432, minimum=1, maximum=65535),
        name=name,
        user=read.raw("DB_USER") or "postgres",
        password=read.environ.get("DB_PASSWORD", ""),
        sqlite_path=sqlite_path,
    )


def _networks(read: _Reader, name: str, default: str = "") -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for item in read.csv(name, default):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(
                f"{name} must be a comma-separated list of IP addresses or CIDR networks (got {item!r})"
            ) from None
    return tuple(networks)


def _key_text(read: _Reader, name: str, *, public: bool) -> str:
    """A base64 Ed25519 key (a private key's 32-byte seed, or a public key), checked now so a
    wrong one stops start-up with one line instead of every message failing to verify."""
    value = read.raw(name)
    if not value:
        return ""
    try:
        signing.public_key(value) if public else signing.private_key(value)
    except signing.BadKey as error:
        what = "a base64 Ed25519 public key (32 bytes)" if public else "base64 of a 32-byte Ed25519 seed"
        raise ConfigError(f"{name} must be {what}: {error}") from None
    return value


def _allowed_networks(read: _Reader, name: str) -> AllowedNetworks:
    try:
        return AllowedNetworks.parse(read.csv(name, ""))
    except ValueError as error:
        raise ConfigError(
            f"{name} must be a comma-separated list of CIDR networks, addresses and host names (got {str(error)!r})"
        ) from None


def _apps_domain(read: _Reader) -> str:
    value = normalise_host(read.raw("APPS_DOMAIN"))
    if not value:
        return ""
    # ``localhost`` has one label, but ``apps.localhost`` is what ``make run`` uses.
    problem = host_problem(value)
    if problem:
        raise ConfigError(f"APPS_DOMAIN {problem} (got {value!r})")
    return value


def _allowed_hosts(read: _Reader, apps_domain: str) -> list[str]:
    hosts = read.csv("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
    # Every app host under APPS_DOMAIN (Django's leading-dot pattern: the domain and its
    # sub-domains); the host router answers for them before anything else reads the Host.
    if apps_domain and f".{apps_domain}" not in hosts:
        hosts.append(f".{apps_domain}")
    return hosts


def _time_zone(read: _Reader) -> str:
    value = read.raw("TZ") or "UTC"
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"TZ must be an IANA time zone such as UTC or Europe/Madrid (got {value!r})") from None
    return value


def load(environ: Mapping[str, str], base_dir: Path) -> Config:
    """Parse ``environ`` into a ``Config``; raise ``ConfigError`` naming the culprit."""
    read = _Reader(environ)
    mode = read.choice("APP_MODE", MODES, "standalone")
    defaults = MODE_DEFAULTS[mode]
    discovery = read.choice("APP_DISCOVERY_ADAPTER", ADAPTERS, defaults["discovery"])
    process = read.choice("APP_PROCESS_ADAPTER", ADAPTERS, defaults["process"])
    command = _command_adapter(read, defaults["command"])

    if mode == "worker" and process != "local":
        raise ConfigError("APP_PROCESS_ADAPTER must be local when APP_MODE=worker (a worker hosts apps)")
    if mode == "supervisor" and process != "remote":
        raise ConfigError(
            "APP_PROCESS_ADAPTER must be remote when APP_MODE=supervisor "
            "(use APP_MODE=standalone to host apps in this instance)"
        )
    if process == "remote" and command != "redis":
        raise ConfigError("APP_COMMAND_ADAPTER must be redis when APP_PROCESS_ADAPTER=remote")
    if mode == "worker" and command != "redis":
        raise ConfigError("APP_COMMAND_ADAPTER must be redis when APP_MODE=worker")

    supervisor_redis = read.url("APP_SUPERVISOR_REDIS_URL", ("redis", "rediss", "unix"))
    command_redis = read.url("APP_COMMAND_REDIS_URL", ("redis", "rediss", "unix"))
    if discovery == "remote" and not supervisor_redis:
        raise ConfigError("APP_SUPERVISOR_REDIS_URL is required when APP_DISCOVERY_ADAPTER=remote: a redis:// URL")
    if command == "redis" and not command_redis:
        # The document sets both; one Redis serving both roles is the common case.
        if not supervisor_redis:
            raise ConfigError("APP_COMMAND_REDIS_URL is required when APP_COMMAND_ADAPTER=redis: a redis:// URL")
        command_redis = supervisor_redis

    env_required = mode == "worker"
    environment_name = read.identifier(
        "ENVIRONMENT_NAME", default="" if env_required else "local", required=env_required
    )
    environment_url = read.origin("ENVIRONMENT_URL", required=env_required)
    environment_proxy_url = read.origin("ENVIRONMENT_PROXY_URL")

    redis_prefix = read.raw("APP_REDIS_PREFIX") or "appsup"
    if not REDIS_PREFIX_RE.match(redis_prefix):
        raise ConfigError(
            f"APP_REDIS_PREFIX may hold letters, digits and _ . : - only, 1 to 40 of them (got {redis_prefix!r})"
        )

    storage_dir = Path(read.raw("APP_STORAGE_DIR") or base_dir / "storage")
    app_db_prefix = read.raw("APP_DB_PREFIX") or "app_"
    if not re.match(r"^[a-z][a-z0-9_]{0,20}$", app_db_prefix):
        raise ConfigError(
            "APP_DB_PREFIX must start with a lowercase letter, then lowercase letters, digits or _, "
            f"at most 21 characters (got {app_db_prefix!r})"
        )

    debug = read.boolean("DEBUG", False)
    secret_key = read.raw("SECRET_KEY")
    if not secret_key:
        if not debug:
            raise ConfigError("SECRET_KEY is required unless DEBUG=true: a long random string")
        # Fixed rather than random so that every process of a debug run shares sessions.
        secret_key = "insecure-debug-only-key-do-not-use-in-production"  # noqa: S105

    lease_interval = read.seconds("APP_LEASE_INTERVAL", 3.0)
    # Proxied requests at once per process (apps_registry/proxy/admission.py). gunicorn.conf.py,
    # which knows the thread count, sets it to all threads but two (kept for the admin, the API
    # and health checks) unless it is set; 6 is that share of its default 8 threads.
    proxy_concurrency = read.integer("PROXY_CONCURRENCY", 6, minimum=1, maximum=100_000)
    offline_after = read.seconds("APP_OFFLINE_AFTER", 12.0)
    if offline_after <= 2 * lease_interval:
        raise ConfigError(
            f"APP_OFFLINE_AFTER must be more than twice APP_LEASE_INTERVAL ({lease_interval:g} s), "
            f"got {offline_after:g}"
        )
    # At least twice the offline threshold, so that one missed beat (or a short pause) never moves apps.
    failover_grace = read.seconds("APP_FAILOVER_GRACE", max(60.0, 2 * offline_after))
    if failover_grace < 2 * offline_after:
        raise ConfigError(
            f"APP_FAILOVER_GRACE must be at least twice APP_OFFLINE_AFTER ({offline_after:g} s), got {failover_grace:g}"
        )

    apps_domain = _apps_domain(read)
    if apps_domain and mode == "standalone":
        # Only the supervisor's proxy routes by Host; standalone would serve its own admin there.
        raise ConfigError(
            "APPS_DOMAIN needs APP_MODE=supervisor (its proxy serves apps by host name); "
            "standalone serves apps at /apps/<name>/ only"
        )
    return Config(
        mode=mode,
        discovery_adapter=discovery,
        process_adapter=process,
        command_adapter=command,
        supervisor_redis_url=supervisor_redis,
        command_redis_url=command_redis,
        redis_prefix=redis_prefix,
        environment_name=environment_name,
        environment_url=environment_url,
        environment_proxy_url=environment_proxy_url,
        database=_database(read, storage_dir),
        storage_dir=storage_dir,
        app_db_prefix=app_db_prefix,
        secret_key=secret_key,
        debug=debug,
        allowed_hosts=_allowed_hosts(read, apps_domain),
        time_zone=_time_zone(read),
        heartbeat_interval=read.seconds("APP_HEARTBEAT_INTERVAL", 120.0),
        lease_interval=lease_interval,
        offline_after=offline_after,
        failover_grace=failover_grace,
        command_ttl=read.seconds("APP_COMMAND_TTL", 3600.0),
        command_concurrency=read.integer("APP_COMMAND_CONCURRENCY", 4, minimum=1, maximum=64),
        start_timeout=read.seconds("APP_START_TIMEOUT", 120.0),
        start_lock_ttl=read.seconds("APP_START_LOCK_TTL", 15.0, minimum=1.0),
        move_drain_seconds=read.seconds("APP_MOVE_DRAIN_SECONDS", 5.0, minimum=0.0),
        drain_concurrency=read.integer("APP_DRAIN_CONCURRENCY", 4, minimum=1, maximum=64),
        reconcile_interval=read.seconds("APP_RECONCILE_INTERVAL", 30.0),
        events_group=read.identifier("APP_EVENTS_GROUP", default="supervisor"),
        proxy_connect_timeout=read.seconds("PROXY_CONNECT_TIMEOUT", 3.0),
        proxy_read_timeout=read.seconds("PROXY_READ_TIMEOUT", 30.0),
        proxy_pool_size=read.integer("PROXY_POOL_SIZE", 16, minimum=1, maximum=1024),
        proxy_max_upload_bytes=read.integer("PROXY_MAX_UPLOAD_BYTES", 20 * 1024 * 1024, minimum=1024),
        proxy_route_cache_seconds=read.seconds("PROXY_ROUTE_CACHE_SECONDS", 1.0, minimum=0.0),
        proxy_concurrency=proxy_concurrency,
        app_log_lines=read.integer("APP_LOG_LINES", 500, minimum=10, maximum=100_000),
        proxy_app_concurrency=read.integer(
            "PROXY_APP_CONCURRENCY",
            min(proxy_concurrency, max(2, (proxy_concurrency + 1) // 2)),
            minimum=1,
            maximum=proxy_concurrency,
        ),
        # gunicorn.conf.py sets it: the threads under gthread, 16 under gevent.
        hosted_concurrency=read.integer("HOSTED_CONCURRENCY", 8, minimum=1, maximum=10_000),
        # ... and for any one app (at most HOSTED_CONCURRENCY): 2 under gevent, the threads under gthread.
        hosted_app_concurrency=read.integer("HOSTED_APP_CONCURRENCY", 8, minimum=1, maximum=10_000),
        trusted_proxies=[str(n) for n in _networks(read, "TRUSTED_PROXY_IPS", "127.0.0.1,::1")],
        environment_allowed_networks=_allowed_networks(read, "ENVIRONMENT_ALLOWED_NETWORKS"),
        metrics_token=read.raw("METRICS_TOKEN"),
        metrics_allowed_networks=_networks(read, "METRICS_ALLOWED_IPS"),
        log_format=read.choice("LOG_FORMAT", LOG_FORMATS, "text"),
        log_level=read.choice("LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
        environment_key=_key_text(read, "ENVIRONMENT_KEY", public=False),
        supervisor_key=_key_text(read, "SUPERVISOR_KEY", public=False),
        supervisor_public_key=_key_text(read, "SUPERVISOR_PUBLIC_KEY", public=True),
        environment_approval=read.boolean("ENVIRONMENT_APPROVAL", False),
        login_failure_limit=read.integer("LOGIN_FAILURE_LIMIT", 10, minimum=1, maximum=1000),
        login_lockout_seconds=read.seconds("LOGIN_LOCKOUT_SECONDS", 900.0, minimum=1.0),
        https=read.boolean("APP_HTTPS", False),
        apps_domain=apps_domain,
        backup_dir=Path(read.raw("APP_BACKUP_DIR") or storage_dir / "backups"),
        backup_s3_bucket=read.raw("APP_BACKUP_S3_BUCKET"),
        backup_s3_prefix=read.raw("APP_BACKUP_S3_PREFIX"),
        backup_s3_endpoint=read.raw("APP_BACKUP_S3_ENDPOINT"),
        backup_interval=read.seconds("APP_BACKUP_INTERVAL", 86400.0, minimum=0.0),
        backup_keep=read.integer("APP_BACKUP_KEEP", 7, minimum=1, maximum=1000),
        backup_drill_interval=read.seconds("APP_BACKUP_DRILL_INTERVAL", 86400.0, minimum=0.0),
        media_dir=Path(read.raw("APP_MEDIA_DIR") or storage_dir / "media"),
    )
