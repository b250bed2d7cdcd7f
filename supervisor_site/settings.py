"""Django settings for App Supervisor.

Every value comes from ``supervisor_site.config`` (environment variables, read once and
typed). A wrong configuration stops the process here with one line naming the variable.
"""

import datetime as dt
import os
import sys
from pathlib import Path

from supervisor_site import private_files
from supervisor_site.config import Config, ConfigError, load
from supervisor_site.https import https_settings
from supervisor_site.vouched_hosts import VouchedHosts

BASE_DIR = Path(__file__).resolve().parent.parent

try:
    APP_CONFIG: Config = load(os.environ, BASE_DIR)
except ConfigError as error:
    sys.stderr.write(f"configuration error: {error}\n")
    raise SystemExit(2) from None

APP_MODE = APP_CONFIG.mode
SECRET_KEY = APP_CONFIG.secret_key
DEBUG = APP_CONFIG.debug
# The configured hosts, plus, on a worker, the app host a trusted proxy vouched for (per request).
ALLOWED_HOSTS = VouchedHosts(APP_CONFIG.allowed_hosts)
TIME_ZONE = APP_CONFIG.time_zone
USE_TZ = True
LANGUAGE_CODE = "en-us"
# One date format in every page (supervisor_site/formats/en/formats.py).
FORMAT_MODULE_PATH = ["supervisor_site.formats"]
USE_I18N = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",  # login throttling (supervisor_site.login_throttle)
    "supervisor_site.start_queue_app.StartQueueConfig",  # django-rq, named "Start queue" in the admin
    "revproxy",
    "ninja",  # its templates and static files: the API's Swagger UI page, served by whitenoise
    "apps_registry",
    "worker_agent",
]
# The business modules an app can enable: Django app -> display name. Adding a module is one
# line here plus its package (docs/hosting.md); everything else reads supervisor_site.catalogue.
BUSINESS_MODULES = {
    "worker_agent.modules.contacts": "Contacts",
    "worker_agent.modules.tasks": "Tasks",
}
INSTALLED_APPS += list(BUSINESS_MODULES)

MIDDLEWARE = [
    # First: X-Forwarded-Host/-Proto/-For are believed only from TRUSTED_PROXY_IPS.
    "supervisor_site.forwarded.ForwardedHeadersMiddleware",
    # Supervisor with the Redis config cache: rebuilds it when Redis lost it (throttled EXISTS).
    # Before the host router, so that app hosts' traffic (most of it) keeps the check going.
    "apps_registry.control.discovery.EnsureConfigCacheMiddleware",
    # Supervisor: a Host that names an app (APPS_DOMAIN, custom domains) is that app's, served
    # through the proxy before anything below reads the Host (apps_registry/proxy/hosts.py).
    "apps_registry.proxy.hosts.AppHostMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Serves /apps/<name>/ from this process when it hosts apps (standalone, worker).
    "worker_agent.web.middleware.HostedAppMiddleware",
    "worker_agent.web.sessions.PerAppSessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as axes asks: turns a login refused for too many failures into the 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "supervisor_site.urls"
WSGI_APPLICATION = "supervisor_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _under_gevent() -> bool:
    """Whether gunicorn's gevent worker patched this process (it does before loading Django)."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey and monkey.is_module_patched("socket"))


def _database_settings(config: Config) -> dict:
    db = config.database
    if db.dialect == "postgres":
        return {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": db.host,
            "PORT": db.port,
            "NAME": db.name,
            "USER": db.user,
            "PASSWORD": db.password,
            # Django keeps a connection per thread, and under gevent a "thread" is a greenlet,
            # one per client connection: kept for 60 s they would pile up to one per client.
            "CONN_MAX_AGE": 0 if _under_gevent() else 60,
            "CONN_HEALTH_CHECKS": True,
        }
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(db.sqlite_path),
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"},
    }


# Everything this process creates from here on is its account's alone (sessions, password
# hashes, uploads); what an earlier version left readable is tightened.
private_files.restrict_new_files()
private_files.private_dir(APP_CONFIG.storage_dir)
if APP_CONFIG.database.dialect == "sqlite":
    # The embedded default must work on a fresh clone: SQLite cannot create its folder.
    private_files.private_dir(APP_CONFIG.database.sqlite_path.parent)
    private_files.private_sqlite(APP_CONFIG.database.sqlite_path)
DATABASES = {"default": _database_settings(APP_CONFIG)}
# Hosted apps get their own connection aliases at run time; this router keeps the
# registry's tables out of app databases and app tables out of the registry's.
DATABASE_ROUTERS = ["worker_agent.hosting.db_router.HostedAppRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Sessions and CSRF: the supervisor's cookies live under /admin/ only, so a browser never
# sends them to /apps/<name>/ (where the proxy also strips them). CSRF tokens live in the
# session, so there is no separate CSRF cookie to leak.
SESSION_COOKIE_PATH = "/admin/"
# Flash messages in the session, not in a "messages" cookie at path / that every app under
# /apps/ and the supervisor would share.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_USE_SESSIONS = True
CSRF_COOKIE_HTTPONLY = True
# APP_HTTPS: HSTS, the redirect to HTTPS (health probes exempt) and Secure cookies, together.
globals().update(https_settings(APP_CONFIG.https))

# Login throttling (supervisor_site.login_throttle): LOGIN_FAILURE_LIMIT wrong passwords per
# username and address within LOGIN_LOCKOUT_SECONDS, then 429 until that long without one.
AUTHENTICATION_BACKENDS = [
    "supervisor_site.login_throttle.ThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# axes locks at the failure that reaches its limit: the limit+1-th wrong password is refused.
AXES_FAILURE_LIMIT = APP_CONFIG.login_failure_limit + 1
AXES_COOLOFF_TIME = dt.timedelta(seconds=APP_CONFIG.login_lockout_seconds)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_USERNAME_CALLABLE = "supervisor_site.login_throttle.client_username"
AXES_CLIENT_IP_CALLABLE = "supervisor_site.login_throttle.client_address"
AXES_LOCKOUT_CALLABLE = "supervisor_site.login_throttle.lockout_response"
AXES_DISABLE_ACCESS_LOG = True  # who did what is the audit trail's; axes keeps only failures
AXES_VERBOSE = False
if APP_MODE == "worker":
    # A worker's database is its own, not shared with the other environments serving an app:
    # the counts go to the command Redis that every environment already reaches.
    AXES_HANDLER = "axes.handlers.cache.AxesCacheHandler"
    AXES_CACHE = "login_throttle"
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "login_throttle": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": APP_CONFIG.command_redis_url,
            "KEY_PREFIX": f"{APP_CONFIG.redis_prefix}:login",
        },
    }
else:
    AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"

STATIC_URL = "/static/"
STATIC_ROOT = APP_CONFIG.storage_dir / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
MEDIA_ROOT = APP_CONFIG.media_dir

DATA_UPLOAD_MAX_MEMORY_SIZE = APP_CONFIG.proxy_max_upload_bytes

# django-rq: the start queue. Without Redis (standalone) starts run in-process instead.
RQ_QUEUES = {
    "app_starts": {
        "URL": APP_CONFIG.command_redis_url or APP_CONFIG.supervisor_redis_url or "redis://127.0.0.1:6379/0",
        "DEFAULT_TIMEOUT": int(APP_CONFIG.start_timeout * 4 + 60),
    }
}
# Enqueue only once the request's transaction commits; our worker class runs the recovery
# check for starts interrupted by a dead queue worker.
# The backends behind APP_DISCOVERY_ADAPTER and APP_PROCESS_ADAPTER, loaded by dotted path
# (apps_registry.backends) so that the registry can hand changes to them without importing them.
APP_DISCOVERY_BACKEND = {
    "local": "apps_registry.control.discovery.LocalDiscovery",
    "remote": "apps_registry.control.discovery.RemoteDiscovery",
}[APP_CONFIG.discovery_adapter]
APP_PROCESS_BACKEND = {
    "local": "apps_registry.control.runners.local.LocalProcessAdapter",
    "remote": "apps_registry.control.runners.remote.RemoteProcessAdapter",
}[APP_CONFIG.process_adapter]
# Standalone: what a visit to a stopped app calls (start on first visit), named so that the
# hosting middleware does not import the control plane.
APP_FIRST_VISIT_HANDLER = "apps_registry.control.first_visit.start_on_first_visit"
RQ = {"COMMIT_MODE": "on_db_commit", "WORKER_CLASS": "apps_registry.control.start_queue.worker.StartQueueWorker"}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"()": "supervisor_site.log_format.TextFormatter"},
        "json": {"()": "supervisor_site.log_format.JsonFormatter"},
    },
    "filters": {
        # A client's broken request body: one INFO line, no traceback (client_input.py).
        "client_input": {"()": "supervisor_site.client_input.QuietClientInputErrors"},
        "disallowed_host": {"()": "supervisor_site.client_input.QuietDisallowedHost"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": APP_CONFIG.log_format},
    },
    "root": {"handlers": ["console"], "level": APP_CONFIG.log_level},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "django.request": {"filters": ["client_input"]},
        "django.security.DisallowedHost": {"filters": ["disallowed_host"]},
        "rq.worker": {"level": "WARNING"},
    },
}
