"""gunicorn's configuration for every launcher: the container entrypoint, ``make run``
(scripts/cluster.py) and the tests' processes (tests/support/processes.py).

gunicorn reads this file by default when started from the repository root; launchers pass
``-c <root>/gunicorn.conf.py`` anyway, so that another working directory changes nothing.
What differs between launchers comes from the environment (docs/configuration.md,
"Web server"); gunicorn's own ``GUNICORN_CMD_ARGS`` still overrides any of it.
"""

from __future__ import annotations

import os


def _env(name: str, former: str = "") -> str:
    """The variable's value; empty means the default. ``former`` is the name the container
    used before this file existed, still read so that existing deployments keep working."""
    return os.environ.get(name, "").strip() or (os.environ.get(former, "").strip() if former else "")


def _number(name: str, default: int, former: str = "") -> int:
    raw = _env(name, former)
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise SystemExit(f"configuration error: {name} must be a whole number of at least 1 (got {raw!r})")
    return int(raw)


wsgi_app = "supervisor_site.wsgi:application"
# Comma-separated host:port pairs; the container sets 0.0.0.0:$PORT.
bind = [item.strip() for item in (_env("GUNICORN_BIND") or "127.0.0.1:8000").split(",") if item.strip()]

# The supervisor and the workers run gevent: a connection costs a greenlet, not a thread, and a
# client slow to send its headers is cut after ``keepalive`` seconds, so slow clients cannot
# take the admin, the API, the proxy or a worker's apps down (docs/architecture.md, "gunicorn's
# gevent worker"). Standalone keeps threads (gthread): its database is SQLite, whose calls
# gevent cannot make cooperative (a write waiting on the file lock would stall every greenlet).
_mode = os.environ.get("APP_MODE", "").strip() or "standalone"
_worker_class = _env("GUNICORN_WORKER_CLASS") or ("gevent" if _mode in ("supervisor", "worker") else "gthread")
if _worker_class not in ("gthread", "gevent"):
    raise SystemExit(f"configuration error: GUNICORN_WORKER_CLASS must be gthread or gevent (got {_worker_class!r})")
worker_class = _worker_class
workers = _number("GUNICORN_WORKERS", 2, former="WEB_CONCURRENCY")
threads = _number("GUNICORN_THREADS", 8, former="WEB_THREADS")
# Connections (greenlets) per process under gevent, idle kept-alive ones included.
worker_connections = _number("GUNICORN_WORKER_CONNECTIONS", 10_000)
# The proxy may hold all threads of a process but two, which stay for the admin, the API and
# /healthz (apps_registry/proxy/admission.py); config.py reads it in each worker process.
# Under gevent a request costs a greenlet, and the bound is on what the workers may take.
if not os.environ.get("PROXY_CONCURRENCY", "").strip():
    os.environ["PROXY_CONCURRENCY"] = str(max(1, threads - 2) if worker_class == "gthread" else 200)
# Under gevent a request waiting here costs a greenlet and no CPU, and the worker queues each
# app's requests behind its own (HOSTED_APP_CONCURRENCY), so the cap bounds one app's greenlets
# and upstream connections, not the CPU: 64 per process. A lower cap turns a crowd that ignores
# Retry-After into a loop of refusals that costs the supervisor's CPU (docs/architecture.md).
if worker_class == "gevent" and not os.environ.get("PROXY_APP_CONCURRENCY", "").strip():
    # Never above the total, which an operator may have set lower.
    _total = os.environ["PROXY_CONCURRENCY"].strip()  # config.py reports a bad value itself
    os.environ["PROXY_APP_CONCURRENCY"] = str(min(64, int(_total)) if _total.isdigit() and int(_total) else 64)
# Hosted requests at once per process (worker_agent/web/middleware.py); each may hold a
# database connection. Under gthread the threads bound them already; under gevent 16 per
# process keeps a worker environment's PostgreSQL connections at GUNICORN_WORKERS x 16 (+ the
# agent's), whatever the number of clients (docs/architecture.md, "Database connections").
if not os.environ.get("HOSTED_CONCURRENCY", "").strip():
    os.environ["HOSTED_CONCURRENCY"] = str(threads if worker_class == "gthread" else 16)
# ... of which one app may take this many: under gevent a greenlet computing a page runs until
# it waits, so each request in flight in a process divides its CPU; two per app keep a core
# busy while one waits for the database and leave the other apps a place and their share.
if not os.environ.get("HOSTED_APP_CONCURRENCY", "").strip():
    os.environ["HOSTED_APP_CONCURRENCY"] = str(threads if worker_class == "gthread" else 2)

# Seconds a kept-alive connection may stay idle; under gevent also the deadline for reading each
# request's headers (a client trickling them is cut off after it).
keepalive = _number("GUNICORN_KEEPALIVE", 5)

# Several processes (or a restarted one) may listen on the same port while another drains.
reuse_port = True
# No runtime control socket: nothing manages gunicorn through it, and it would be one more
# file (and permission) per container and per test server.
control_socket_disable = True

# A request may run as long as the proxy waits for a worker (PROXY_READ_TIMEOUT, 30 s by default).
timeout = _number("GUNICORN_TIMEOUT", 30)
# SIGTERM lets requests in flight finish for this long (Kubernetes and compose wait 30 s).
graceful_timeout = _number("GUNICORN_GRACEFUL_TIMEOUT", 20, former="WEB_GRACEFUL_TIMEOUT")

# One line per request on stdout; "off" for none (make run's console shows the apps' own logs).
_access_log = _env("GUNICORN_ACCESS_LOG") or "-"
accesslog = None if _access_log.lower() == "off" else _access_log
