"""Discovery adapters: where apps and environments are configured.

One small interface (``Discovery``), two implementations:

- ``LocalDiscovery`` reads the registry database directly (standalone mode).
- ``RemoteDiscovery`` keeps a configuration cache in Redis, written by the supervisor after
  each commit (``apps_registry.registry.outbox``) and read by workers, which have no access to the
  registry database. The database stays the source of truth: ``rebuild()`` rewrites the
  whole cache from it, and ``ensure_built()`` does so when the ``P:cfg:built`` marker is
  missing (Redis restarted empty, FLUSHALL).

Keys (prefix = APP_REDIS_PREFIX): ``P:cfg:app:<name>`` (JSON AppSpec), ``P:cfg:apps`` (set of
names), ``P:cfg:env:<name>`` (JSON EnvSpec), ``P:cfg:envs`` (set), ``P:cfg:built`` (marker),
``P:cfg:rev`` (counter bumped by every write, so a rebuild notices a concurrent publish),
``P:cfg:epoch`` (the registry's configuration epoch the cache holds: an older one than the
registry's means Redis came back from an older snapshot, and the cache is rebuilt).

A reader that finds no marker gets ``CacheNotReady``: an empty cache is not "no apps".
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

import redis
from django.conf import settings
from django.core.exceptions import MiddlewareNotUsed
from django.db import connection
from django.utils import timezone

from apps_registry import backends
from apps_registry.control import authority, keys, redis_client, specs
from apps_registry.models import ConfigEpoch

log = logging.getLogger(__name__)

# How often a process re-checks the marker at most (an EXISTS), from requests.
ENSURE_INTERVAL = 2.0
REBUILD_ATTEMPTS = 10


# KEYS[1] = marker, KEYS[2] = set of names, KEYS[3] = epoch, ARGV[1] = key prefix of the items.
# Returns nil when the cache is not built, else the cache's epoch, its marker and every item's JSON.
_READ_ALL = """
local built = redis.call('GET', KEYS[1])
if not built then return nil end
local values = {redis.call('GET', KEYS[3]) or '0', built}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local raw = redis.call('GET', ARGV[1] .. name)
  if raw then values[#values + 1] = raw end
end
return values
"""


# KEYS[1] = epoch, ARGV[1] = the epoch of the change being published: a publish never lowers
# it (commits' callbacks may run out of order).
_RAISE_EPOCH = """
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
"""


class Stamp(NamedTuple):
    """Which cache a read came from: its epoch and its rebuild marker (``P:cfg:built``)."""

    epoch: int
    built: str


LOCAL_STAMP = Stamp(0, "")  # the database itself: never stale


class CacheNotReady(Exception):
    """The Redis configuration cache has no ``built`` marker: it must be rebuilt first."""


class Discovery(Protocol):
    def publish_app_by_pk(self, pk: int, epoch: int = 0) -> None: ...
    def unpublish_app(self, name: str, epoch: int = 0) -> None: ...
    def publish_environment_by_pk(self, pk: int, epoch: int = 0) -> None: ...
    def unpublish_environment(self, name: str, epoch: int = 0) -> None: ...
    def get_app(self, name: str) -> dict | None: ...
    def get_app_at(self, name: str) -> tuple[Stamp, dict | None]: ...
    def apps_for_environment(self, env: str) -> list[dict]: ...
    def apps_for_environment_at(self, env: str) -> tuple[Stamp, list[dict]]: ...
    def get_environment(self, name: str) -> dict | None: ...
    def list_environments(self) -> list[dict]: ...
    def rebuild(self) -> None: ...
    def ensure_built(self, force: bool = False) -> None: ...


class LocalDiscovery:
    """Reads the registry database; there is nothing to publish or rebuild."""

    def publish_app_by_pk(self, pk: int, epoch: int = 0) -> None:
        return None

    def unpublish_app(self, name: str, epoch: int = 0) -> None:
        return None

    def publish_environment_by_pk(self, pk: int, epoch: int = 0) -> None:
        return None

    def unpublish_environment(self, name: str, epoch: int = 0) -> None:
        return None

    def get_app(self, name: str) -> dict | None:
        app = specs.applications().filter(name=name).first()
        return specs.app_spec(app) if app is not None else None

    def get_app_at(self, name: str) -> tuple[Stamp, dict | None]:
        return LOCAL_STAMP, self.get_app(name)

    def apps_for_environment(self, env: str) -> list[dict]:
        apps = specs.applications().filter(placements__environment__name=env).order_by("name")
        return [specs.app_spec(app) for app in apps]

    def apps_for_environment_at(self, env: str) -> tuple[Stamp, list[dict]]:
        return LOCAL_STAMP, self.apps_for_environment(env)

    def get_environment(self, name: str) -> dict | None:
        from apps_registry.models import Environment

        env = Environment.objects.filter(name=name).first()
        return specs.env_spec(env) if env is not None else None

    def list_environments(self) -> list[dict]:
        return specs.all_env_specs()

    def rebuild(self) -> None:
        return None

    def ensure_built(self, force: bool = False) -> None:
        return None


class RemoteDiscovery:
    """The Redis configuration cache: written by the supervisor, read by everyone."""

    def __init__(self, client: Callable[[], redis.Redis] = redis_client.get):
        self._client = client
        self._checked_at = float("-inf")
        self._lock = threading.Lock()
        # Set when a write failed (Redis unreachable): the cache may miss a change, so the
        # next ensure_built() rebuilds it whatever the marker says.
        self._dirty = False
        # The registry's epoch when the cache was last seen behind it: still behind that at the
        # next check, the cache is rebuilt (just behind is normal for the ms between a commit
        # and its publish).
        self._behind: int | None = None
        self._first_look = True  # at boot, an older cache is rebuilt at once

    # Keys
    @staticmethod
    def _app_key(name: str) -> str:
        return keys.cfg_app(name)

    @staticmethod
    def _env_key(name: str) -> str:
        return keys.cfg_env(name)

    @property
    def _apps(self) -> str:
        return keys.cfg_apps()

    @property
    def _envs(self) -> str:
        return keys.cfg_envs()

    @property
    def _built(self) -> str:
        return keys.cfg_built()

    @property
    def _rev(self) -> str:
        return keys.cfg_rev()

    # Writes (supervisor, after commit)
    def _write(self, ops: Callable[[redis.client.Pipeline], None], epoch: int = 0) -> None:
        # Runs after the commit: failing here would turn a saved change into an error page.
        # The database has it; a rebuild brings the cache back in line once Redis answers.
        try:
            with self._client().pipeline(transaction=True) as pipe:
                pipe.exists(self._built)
                ops(pipe)
                pipe.incr(self._rev)
                if epoch:
                    pipe.eval(_RAISE_EPOCH, 1, keys.cfg_epoch(), epoch)
                built = pipe.execute()[0]
        except redis.RedisError as error:
            log.warning("config cache: write failed (%s); rebuilding when Redis answers again", error)
            self._dirty = True
            return
        if not built:
            # Redis lost its data: one change alone would leave a partial cache behind, which
            # readers ignore anyway (no marker). Rebuild it all from the database now.
            log.warning("config cache: marker missing on write, rebuilding from the database")
            try:
                self.rebuild()
            except redis.RedisError as error:
                log.warning("config cache: rebuild failed (%s); trying again later", error)
                self._dirty = True

    def publish_app_by_pk(self, pk: int, epoch: int = 0) -> None:
        spec = specs.app_spec_by_pk(pk)
        if spec is None:  # deleted since; its own unpublish follows
            return
        name = spec["name"]
        self._write(lambda pipe: (pipe.set(self._app_key(name), specs.dumps(spec)), pipe.sadd(self._apps, name)), epoch)

    def unpublish_app(self, name: str, epoch: int = 0) -> None:
        self._write(lambda pipe: (pipe.delete(self._app_key(name)), pipe.srem(self._apps, name)), epoch)

    def publish_environment_by_pk(self, pk: int, epoch: int = 0) -> None:
        spec = specs.env_spec_by_pk(pk)
        if spec is None:
            return
        name = spec["name"]
        self._write(lambda pipe: (pipe.set(self._env_key(name), specs.dumps(spec)), pipe.sadd(self._envs, name)), epoch)

    def unpublish_environment(self, name: str, epoch: int = 0) -> None:
        self._write(lambda pipe: (pipe.delete(self._env_key(name)), pipe.srem(self._envs, name)), epoch)

    def rebuild(self) -> None:
        """Rewrite the whole cache from the database in one MULTI/EXEC.

        ``P:cfg:rev`` is WATCHed from before the database is read: a publish that lands in
        between aborts the transaction and the snapshot is taken again, so a rebuild never
        overwrites a newer value with an older one.
        """
        if settings.APP_CONFIG.mode == "worker":
            raise RuntimeError("only the supervisor rebuilds the configuration cache (it holds the registry)")
        for _attempt in range(REBUILD_ATTEMPTS):
            with self._client().pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self._rev)
                    # Read before the items: the cache then holds at least what this epoch says.
                    epoch = ConfigEpoch.current()
                    apps = specs.all_app_specs()
                    envs = specs.all_env_specs()
                    old_apps = pipe.smembers(self._apps)
                    old_envs = pipe.smembers(self._envs)
                    pipe.multi()
                    stale = [self._app_key(n) for n in old_apps - {a["name"] for a in apps}]
                    stale += [self._env_key(n) for n in old_envs - {e["name"] for e in envs}]
                    pipe.delete(self._apps, self._envs, *stale)
                    for spec in apps:
                        pipe.set(self._app_key(spec["name"]), specs.dumps(spec))
                    for spec in envs:
                        pipe.set(self._env_key(spec["name"]), specs.dumps(spec))
                    if apps:
                        pipe.sadd(self._apps, *[a["name"] for a in apps])
                    if envs:
                        pipe.sadd(self._envs, *[e["name"] for e in envs])
                    built = json.dumps({"at": timezone.now().isoformat(), "apps": len(apps), "envs": len(envs)})
                    pipe.set(self._built, built)
                    pipe.set(keys.cfg_epoch(), epoch)  # the registry's, even if Redis held a higher one
                    # Redis may have come back empty: agents that have not pinned it need it.
                    pipe.set(keys.cfg_supervisor_key(), authority.public())
                    pipe.incr(self._rev)
                    pipe.execute()
                    self._behind = None
                    log.info("config cache rebuilt: %d apps, %d environments, epoch %d", len(apps), len(envs), epoch)
                    return
                except redis.WatchError:
                    continue
        raise RuntimeError(f"config cache rebuild kept colliding with writes ({REBUILD_ATTEMPTS} attempts)")

    def ensure_built(self, force: bool = False) -> None:
        """Rebuild if the marker is missing or the cache is older than the registry (its epoch
        behind the registry's, a restored snapshot). Cheap: at most one EXISTS + GET and one
        read of the epoch per ENSURE_INTERVAL."""
        if settings.APP_CONFIG.mode == "worker":
            return
        now = time.monotonic()
        if not force and now - self._checked_at < ENSURE_INTERVAL:
            return
        with self._lock:
            if not force and now - self._checked_at < ENSURE_INTERVAL:
                return
            # Throttled even when Redis is down, so an outage costs one timeout per interval.
            self._checked_at = time.monotonic()
            dirty = self._dirty
            with self._client().pipeline(transaction=True) as pipe:
                built, cached = pipe.exists(self._built).get(keys.cfg_epoch()).execute()
            reason = "a write failed" if dirty else "" if built else "marker missing (Redis emptied?)"
            if not reason:
                reason = self._older(int(cached or 0), ConfigEpoch.current(), at_once=force or self._first_look)
            self._first_look = False
            if reason:
                log.warning("config cache: %s, rebuilding from the database", reason)
                try:
                    self._dirty = False
                    self.rebuild()
                except Exception:
                    self._dirty = dirty  # still throttled: an outage costs one try per interval
                    raise

    def _older(self, cached: int, registry: int, *, at_once: bool) -> str:
        """Why the cache must be rebuilt for its epoch, or "". Behind at a first look (boot,
        ``force``) rebuilds at once; afterwards only if still behind the registry's epoch of
        the previous check, so a publish still on its way is not mistaken for a stale cache."""
        if cached >= registry:
            self._behind = None
            return ""
        if at_once or (self._behind is not None and cached < self._behind):
            return f"epoch {cached} older than the registry's {registry} (Redis restored from an older snapshot?)"
        self._behind = registry
        return ""

    def is_built(self) -> bool:
        return bool(self._client().exists(self._built))

    # Reads (workers, proxy)
    def _read(self, key: str) -> tuple[Stamp, dict | None]:
        # MULTI: the marker, the epoch and the value come from the same moment.
        with self._client().pipeline(transaction=True) as pipe:
            built, epoch, raw = pipe.get(self._built).get(keys.cfg_epoch()).get(key).execute()
        if built is None:
            raise CacheNotReady("configuration cache not built yet")
        return Stamp(int(epoch or 0), built), json.loads(raw) if raw else None

    def _read_all(self, names_key: str, item_prefix: str) -> tuple[Stamp, list[dict]]:
        # One atomic script: a reader never mixes the set of names from one moment with
        # values (or the epoch) from another (a FLUSHALL or an unpublish in between).
        values = self._client().eval(_READ_ALL, 3, self._built, names_key, keys.cfg_epoch(), item_prefix)
        if values is None:
            raise CacheNotReady("configuration cache not built yet")
        epoch, built, *items = values
        return Stamp(int(epoch), built), sorted((json.loads(raw) for raw in items), key=lambda spec: spec["name"])

    def get_app(self, name: str) -> dict | None:
        return self._read(self._app_key(name))[1]

    def get_app_at(self, name: str) -> tuple[Stamp, dict | None]:
        """The app's spec with the stamp (epoch, marker) of the cache it came from."""
        return self._read(self._app_key(name))

    def apps_for_environment(self, env: str) -> list[dict]:
        return self.apps_for_environment_at(env)[1]

    def apps_for_environment_at(self, env: str) -> tuple[Stamp, list[dict]]:
        """The apps placed on ``env`` with the stamp (epoch, marker) of the cache they came from."""
        stamp, found = self._read_all(self._apps, self._app_key(""))
        return stamp, [spec for spec in found if env in spec.get("environments", {})]

    def get_environment(self, name: str) -> dict | None:
        return self._read(self._env_key(name))[1]

    def list_environments(self) -> list[dict]:
        return self._read_all(self._envs, self._env_key(""))[1]


def get_discovery() -> Discovery:
    """The adapter named by APP_DISCOVERY_ADAPTER (one per process)."""
    return backends.discovery()


class EnsureConfigCacheMiddleware:
    """Rebuilds the Redis cache at start-up and on the first request after it went missing
    (supervisor only).

    Django builds its middleware when the WSGI application is created, i.e. when a gunicorn
    worker boots: the first check runs then, so workers get their cache even before anyone
    visits the supervisor. After that the check is throttled to one EXISTS per
    ENSURE_INTERVAL per process. Failures are logged and never fail a request: the admin
    works from the database, and the next check tries again.
    """

    def __init__(self, get_response):
        config = settings.APP_CONFIG
        if config.mode == "worker" or config.discovery_adapter != "remote":
            raise MiddlewareNotUsed
        self.get_response = get_response
        self._check()
        if not connection.in_atomic_block:
            connection.close()  # opened at boot, outside any request: do not keep it idle

    @staticmethod
    def _check() -> None:
        try:
            get_discovery().ensure_built()
        except Exception as error:  # Redis or the database down: retried on a later request
            log.warning("config cache check failed: %s", error)

    def __call__(self, request):
        self._check()
        return self.get_response(request)
