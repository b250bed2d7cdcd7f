"""Every Redis key of the project, built in one place (the key tables of docs/protocol.md).

Each key is ``<APP_REDIS_PREFIX>:part:part`` (``redis_client.key``). Names, environment
names and command ids are validated before they become key parts.
"""

from __future__ import annotations

from apps_registry.control.redis_client import key as _key

# --- command channel (supervisor -> worker) ---------------------------------------------


def command_stream(env: str) -> str:
    """``P:cmd:<env>``: the environment's command stream (consumer group ``agent``)."""
    return _key("cmd", env)


def ack(command_id: str) -> str:
    """``P:ack:<command id>``: the command's acknowledgement, for a blocking wait."""
    return _key("ack", command_id)


def done(env: str, command_id: str) -> str:
    """``P:done:<env>:<command id>``: the result of a processed command (de-duplication)."""
    return _key("done", env, command_id)


def generations(env: str) -> str:
    """``P:gen:<env>``: hash ``generation_field(app, incarnation)`` -> newest generation this
    environment has seen."""
    return _key("gen", env)


def generation_field(app: str, incarnation: str) -> str:
    """A field of ``P:gen:<env>``: ``<app>:<incarnation>`` (``<app>`` alone when the
    incarnation is unknown), so an app created again under a name starts with no generation."""
    return f"{app}:{incarnation}" if incarnation else app


# --- events (worker -> supervisor) --------------------------------------------------------


def events_stream() -> str:
    """``P:events``: every worker's reports (consumer group ``supervisor``)."""
    return _key("events")


# --- per-app logs (worker -> supervisor) ---------------------------------------------------


def app_log(app: str, env: str) -> str:
    """``P:log:<app>:<env>``: capped stream of the app's recent log lines on that environment
    (``MAXLEN ~ APP_LOG_LINES``); ``app_log(app, "*")`` matches every environment's."""
    return _key("log", app, env)


# --- per-app figures (worker -> supervisor) ------------------------------------------------


def app_figures(app: str, minute: int, env: str) -> str:
    """``P:fig:<app>:<minute>:<env>``: hash of the app's requests in that minute (Redis clock,
    ``unix seconds // 60``) on that environment: ``requests``, ``errors`` (5xx) and latency
    bucket counts ``b0``… (``app_figures.BOUNDS_MS``); every worker process adds to it
    (HINCRBY), it expires after ``FIGURES_TTL``."""
    return _key("fig", app, str(minute), env)


def app_database_size(app: str, env: str) -> str:
    """``P:dbsize:<app>:<env>``: hash ``bytes``, ``at`` (unix seconds): the app's database size
    as that environment last measured it."""
    return _key("dbsize", app, env)


# --- liveness -------------------------------------------------------------------------------


def lease(env: str, fingerprint: str) -> str:
    """``P:lease:<env>:<key fingerprint>``: the signed lease of the agent holding that key
    (``protocol.Lease``). One key per environment *and* key, so a second agent claiming the
    name cannot overwrite the real one's lease, only write one nobody believes."""
    return _key("lease", env, fingerprint)


# --- configuration cache ----------------------------------------------------------------------


def cfg_app(name: str) -> str:
    """``P:cfg:app:<name>``: JSON AppSpec; ``cfg_app("")`` is the prefix of them all."""
    return _key("cfg", "app", name)


def cfg_apps() -> str:
    """``P:cfg:apps``: set of the cached application names."""
    return _key("cfg", "apps")


def cfg_env(name: str) -> str:
    """``P:cfg:env:<name>``: JSON EnvSpec; ``cfg_env("")`` is the prefix of them all."""
    return _key("cfg", "env", name)


def cfg_envs() -> str:
    """``P:cfg:envs``: set of the cached environment names."""
    return _key("cfg", "envs")


def cfg_built() -> str:
    """``P:cfg:built``: marker of the last full rebuild; missing means "not ready"."""
    return _key("cfg", "built")


def cfg_epoch() -> str:
    """``P:cfg:epoch``: the registry's configuration epoch the cache holds (never lowered by a
    publish; set to the registry's by a rebuild)."""
    return _key("cfg", "epoch")


def cfg_supervisor_key() -> str:
    """``P:cfg:supervisor-key``: the supervisor's public key (base64), for agents that have not
    pinned one (docs/security.md)."""
    return _key("cfg", "supervisor-key")


def cfg_rev() -> str:
    """``P:cfg:rev``: bumped by every cache write; a rebuild WATCHes it."""
    return _key("cfg", "rev")


# --- start queue and first visit --------------------------------------------------------------


def start_lock(app: str) -> str:
    """``P:lock:start:<app>``: owner token of the job starting the app."""
    return _key("lock", "start", app)


def job_lock(job_id: str) -> str:
    """``P:lock:job:<job id>``: owner token of the queue worker running a tracked job (move,
    drain); expires when that worker dies, which is how recovery finds the job orphaned."""
    return _key("lock", "job", job_id)


def start_pending() -> str:
    """``P:start:pending``: hash app -> "<generation> <request_id>" of unfinished start jobs."""
    return _key("start", "pending")


def start_recovery_lock() -> str:
    """``P:lock:start-recovery``: throttle of the interrupted-start recovery check."""
    return _key("lock", "start-recovery")


def backup_schedule_lock() -> str:
    """``P:lock:backup-schedule``: one queue worker at a time runs the backup schedule's check."""
    return _key("lock", "backup-schedule")


def first_visit_lock(app: str) -> str:
    """``P:lock:first-visit:<app>``: debounce of "start on first visit"."""
    return _key("lock", "first-visit", app)
