"""Where a request for ``/apps/<name>/…`` on the supervisor goes, decided from the registry only.

Nothing in the request can name a host: the request gives an app name (validated) and,
optionally, the name of one of that app's own environments (``?env=`` or the remembered
cookie); the target URL always comes from the environment's registry record. One query
loads the app with its placements and their environments; liveness costs one Redis round
trip.
"""

from __future__ import annotations

import datetime as dt
import logging
import string
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import F

from apps_registry.control import liveness
from apps_registry.models import Application, AppStatus, Environment, EnvironmentStatus
from apps_registry.names import is_valid_name

log = logging.getLogger(__name__)

# The cookie that remembers the chosen environment; its path is /apps/<name>/.
ENV_COOKIE = "appsup_env"
ENV_PARAM = "env"

# Encoded forms that could smuggle a separator or a dot segment past the URL router.
_FORBIDDEN_ENCODINGS = ("%2f", "%2e", "%5c", "%00")
_CONTROL = frozenset(chr(c) for c in range(0x20)) | {"\x7f", "\\"}


@dataclass(frozen=True)
class Placement:
    """One environment of the app, as the proxy sees it."""

    environment: str
    target_url: str
    url: str
    enabled: bool
    env_status: str
    last_seen: dt.datetime | None
    app_status: str
    # False on a move's target until its switch and on its source after (registry/moves.py).
    serving: bool = True

    @property
    def switching(self) -> bool:
        """Running but held out of the route by a move under way."""
        return not self.serving and self.enabled and self.app_status == AppStatus.RUNNING

    @property
    def choosable(self) -> bool:
        # ``unknown`` (a missed beat, or Redis unreachable) keeps receiving requests: its apps
        # are still serving as far as anyone knows, and a worker that is really gone answers
        # with a 502 naming it. Only ``offline`` and ``stopped`` are taken out of rotation.
        return (
            self.enabled
            and self.serving
            and self.env_status in (EnvironmentStatus.ONLINE, EnvironmentStatus.UNKNOWN)
            and self.app_status == AppStatus.RUNNING
        )


@dataclass(frozen=True)
class AppRoute:
    pk: int
    name: str
    display_name: str
    options: dict
    placements: tuple[Placement, ...] = field(default_factory=tuple)

    def choosable(self) -> list[Placement]:
        """Online environments; only when none is online, the ``unknown`` ones (a beat went
        missing or Redis cannot tell), so a dead worker is left as soon as another is sure."""
        candidates = [p for p in self.placements if p.choosable]
        online = [p for p in candidates if p.env_status == EnvironmentStatus.ONLINE]
        return online or candidates

    def placement(self, environment: str) -> Placement | None:
        return next((p for p in self.placements if p.environment == environment), None)

    def as_application(self) -> Application:
        """An ``Application`` carrying the loaded fields (no query), for hooks."""
        return Application(pk=self.pk, name=self.name, display_name=self.display_name, options=self.options)


@dataclass(frozen=True)
class Decision:
    """``proxy`` (to ``placement``), ``choose`` (show the chooser), ``unavailable`` (503,
    ``status`` is the app's) or ``offline`` (502, ``environments`` named). ``moved_from``
    names the remembered environment this process could not reach just now, which the
    request was moved away from (the remembered choice is then updated)."""

    kind: str
    placement: Placement | None = None
    remember: bool = False
    status: str = ""
    environments: tuple[str, ...] = ()
    notice: str = ""
    moved_from: str = ""


# Environments this process failed to reach just now (refused or dropped connections):
# name -> until when (monotonic) requests avoid it while another environment can serve.
# The registry learns of a dead worker only when its lease is OFFLINE_AFTER old; until then
# this keeps requests from trying it first, one failed connection each.
UNREACHABLE_FOR = 10.0
_unreachable: dict[str, float] = {}


def note_unreachable(environment: str) -> None:
    """``environment`` refused or dropped a connection: avoid it for UNREACHABLE_FOR seconds."""
    _unreachable[environment] = time.monotonic() + UNREACHABLE_FOR


def note_reachable(environment: str) -> None:
    _unreachable.pop(environment, None)


def recently_unreachable(environment: str) -> bool:
    until = _unreachable.get(environment)
    if until is None:
        return False
    if until <= time.monotonic():
        _unreachable.pop(environment, None)
        return False
    return True


def alternative(route: AppRoute, failed: str) -> Placement | None:
    """Another environment that can serve the app now, for a retry after ``failed`` refused
    or dropped the connection: one not known to be unreachable first."""
    others = [p for p in route.choosable() if p.environment != failed]
    reachable = [p for p in others if not recently_unreachable(p.environment)]
    return (reachable or others or [None])[0]


@dataclass(frozen=True)
class Mount:
    """Where the browser sees an app: ``/apps/<name>/`` on the supervisor's host (path mode)
    or ``/`` on a host of its own (``<label>.<APPS_DOMAIN>`` or its custom domain). ``rest``
    is the path below that root; ``host`` is the Host the browser sent (validated by then)."""

    name: str
    rest: str
    host: str
    prefix: str

    @property
    def own_host(self) -> bool:
        return self.prefix == "/"

    def public_path(self, worker_path: str) -> str:
        """A path under the worker's ``/apps/<name>/`` as the browser must see it."""
        inner = f"/apps/{self.name}/"
        if not self.own_host or not (worker_path.startswith(inner) or worker_path == inner.rstrip("/")):
            return worker_path
        return "/" + worker_path[len(inner) :]


def _safe_path(path_info: str, raw_path: str | None) -> bool:
    """Whether a request path may be forwarded: no encoded slashes, dots, backslashes or NULs
    in the raw path (nor in the decoded one, so double encoding is refused too), no control
    characters."""
    raw = (raw_path if raw_path is not None else path_info).split("?", 1)[0]
    for candidate in (raw.lower(), path_info.lower()):
        if any(encoded in candidate for encoded in _FORBIDDEN_ENCODINGS):
            return False
    return not any(ch in _CONTROL for ch in path_info)


def _safe_rest(rest: str) -> bool:
    segments = rest.split("/")
    # A trailing slash yields one empty last segment; any other empty or dot segment is refused.
    return not (any(seg in ("", ".", "..") for seg in segments[:-1]) or segments[-1] in (".", ".."))


def split_app_path(path_info: str, raw_path: str | None) -> tuple[str, str] | None:
    """``("crm", "admin/x/")`` for ``/apps/crm/admin/x/``, or None when the path must be refused.

    Refused: an invalid app name, encoded slashes, dots or backslashes in the raw path, dot or
    empty segments, control characters. The remainder is re-quoted by the proxy, so what the
    worker sees is exactly the normalised path under ``/apps/<name>/``.
    """
    if not path_info.startswith("/apps/") or not _safe_path(path_info, raw_path):
        return None
    name, _, rest = path_info[len("/apps/") :].partition("/")
    if not is_valid_name(name) or not _safe_rest(rest):
        return None
    return name, rest


def split_host_path(path_info: str, raw_path: str | None) -> str | None:
    """``"admin/x/"`` for ``/admin/x/`` on an app's own host, or None when refused (the same
    rules as ``split_app_path``): the worker then sees ``/apps/<name>/admin/x/``."""
    if not path_info.startswith("/") or not _safe_path(path_info, raw_path):
        return None
    rest = path_info[1:]
    return rest if _safe_rest(rest) else None


# custom domain -> (expires at, app name or None). Bounded like _cache: unknown hosts are
# remembered too (a scan of random Host headers costs one query per host per TTL at most).
_domains: dict[str, tuple[float, str | None]] = {}


def app_for_domain(domain: str) -> str | None:
    """The app whose custom domain is ``domain`` (lower-case, no port), or None."""
    ttl = settings.APP_CONFIG.proxy_route_cache_seconds
    now = time.monotonic()
    cached = _domains.get(domain)
    if ttl > 0 and cached is not None and cached[0] > now:
        return cached[1]
    name = Application.objects.filter(domain=domain).values_list("name", flat=True).first()
    if ttl > 0:
        if len(_domains) >= _CACHE_MAX:
            _domains.clear()
        _domains[domain] = (now + ttl, name)
    return name


def safe_query(query_string: str) -> str:
    """The raw query string, with anything outside printable ASCII percent-encoded."""
    if all(ch in _PRINTABLE_QUERY for ch in query_string):
        return query_string
    return "".join(ch if ch in _PRINTABLE_QUERY else "".join(f"%{b:02X}" for b in ch.encode()) for ch in query_string)


_PRINTABLE_QUERY = frozenset(string.ascii_letters + string.digits + "!$&'()*+,-./:;=?@[]^_`{|}~%")


def _without_env_param(query_string: str) -> str:
    return "&".join(part for part in query_string.split("&") if part and part.split("=", 1)[0] != ENV_PARAM)


def query_without_env(query_string: str) -> str:
    """The query string minus ``env=…`` (which is the supervisor's, not the app's)."""
    return _without_env_param(query_string) if ENV_PARAM in query_string else query_string


_ROW_FIELDS = (
    "pk",
    "name",
    "display_name",
    "options",
    "p_status",
    "e_name",
    "e_url",
    "e_proxy_url",
    "e_enabled",
    "e_last_heartbeat",
    "e_stopped_at",
    "e_public_key",
    "p_serving",
)


# name -> (expires at, route). Only apps that exist are kept, and at most _CACHE_MAX of them,
# so scanning random names cannot grow it.
_cache: dict[str, tuple[float, AppRoute]] = {}
_CACHE_MAX = 1024


def route_for(name: str) -> AppRoute | None:
    """``load_route`` behind a short per-process cache (PROXY_ROUTE_CACHE_SECONDS): a burst of
    requests for one page (its HTML, then its scripts and images) reads the registry once."""
    ttl = settings.APP_CONFIG.proxy_route_cache_seconds
    if ttl <= 0:
        return load_route(name)
    now = time.monotonic()
    cached = _cache.get(name)
    if cached is not None and cached[0] > now:
        return cached[1]
    route = load_route(name)
    if route is not None:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[name] = (now + ttl, route)
    return route


def load_route(name: str) -> AppRoute | None:
    """The app with its placements and environments in ONE query (a LEFT JOIN), or None."""
    rows = list(
        Application.objects.filter(name=name)
        .annotate(
            p_status=F("placements__status"),
            e_name=F("placements__environment__name"),
            e_url=F("placements__environment__url"),
            e_proxy_url=F("placements__environment__proxy_url"),
            e_enabled=F("placements__environment__enabled"),
            e_last_heartbeat=F("placements__environment__last_heartbeat"),
            e_stopped_at=F("placements__environment__stopped_at"),
            # Liveness believes only leases signed with the bound key.
            e_public_key=F("placements__environment__public_key"),
            p_serving=F("placements__serving"),
        )
        .values_list(*_ROW_FIELDS)
    )
    if not rows:
        return None
    first = rows[0]
    envs = [
        Environment(name=row[5], last_heartbeat=row[9], stopped_at=row[10], public_key=row[11] or "")
        for row in rows
        if row[5] is not None
    ]
    statuses = liveness.environment_statuses(envs) if envs else {}
    placements = tuple(
        sorted(
            (
                Placement(
                    environment=row[5],
                    target_url=(row[7] or row[6]).rstrip("/"),
                    url=row[6].rstrip("/"),
                    enabled=row[8] and _target_allowed(row[5], (row[7] or row[6]).rstrip("/")),
                    env_status=statuses[row[5]][0],
                    last_seen=statuses[row[5]][1],
                    app_status=row[4],
                    serving=row[12] is not False,
                )
                for row in rows
                if row[5] is not None
            ),
            key=lambda p: p.environment,
        )
    )
    return AppRoute(
        pk=first[0], name=first[1], display_name=first[2] or first[1], options=first[3] or {}, placements=placements
    )


def _target_allowed(env: str, target: str) -> bool:
    """Defence in depth behind ingest's check: a URL registered before ENVIRONMENT_ALLOWED_NETWORKS
    was set (or narrowed) is never connected to; its placement is treated as disabled."""
    problem = settings.APP_CONFIG.environment_allowed_networks.url_problem(target)
    if problem:
        log.warning("proxy: not connecting to %s: its URL %s", env, problem)
    return not problem


def decide(route: AppRoute, requested: str | None, remembered: str | None) -> Decision:
    """Pick the environment for this request, or say why there is none."""
    choosable = route.choosable()
    by_name = {p.environment: p for p in choosable}
    if requested is not None:
        if requested in by_name:
            return Decision("proxy", by_name[requested], remember=True)
        if choosable:
            shown = requested if is_valid_name(requested) else "that environment"
            return Decision("choose", notice=f"{shown} cannot serve {route.name} now; choose another.")
    # What this process just failed to reach is left while another environment can serve.
    reachable = [p for p in choosable if not recently_unreachable(p.environment)] or choosable
    if remembered in by_name and by_name[remembered] not in reachable and len(reachable) == 1:
        return Decision("proxy", reachable[0], moved_from=remembered)
    if len(reachable) == 1:
        return Decision("proxy", reachable[0])
    if reachable:
        if remembered in by_name:
            return Decision("proxy", by_name[remembered])
        return Decision("choose")
    return _why_unavailable(route)


def _why_unavailable(route: AppRoute) -> Decision:
    if any(p.switching for p in route.placements):
        # A move holds the app out of its route on one side: the view waits briefly for the
        # switch to land rather than answering an error (view.SWITCH_WAIT).
        return Decision("switching")
    usable = [p for p in route.placements if p.enabled and p.serving]
    unreachable = tuple(p.environment for p in usable if p.app_status == AppStatus.RUNNING)
    if unreachable:
        return Decision("offline", environments=unreachable)
    statuses = {p.app_status for p in usable}
    for status in (AppStatus.STARTING, AppStatus.QUEUED, AppStatus.STOPPING, AppStatus.ERROR):
        if status in statuses:
            return Decision("unavailable", status=status)
    return Decision("unavailable", status=AppStatus.STOPPED)


def on_stopped_app_visit(app: Application) -> str | None:
    """Called when someone visits a stopped app through the proxy.

    ``app`` carries pk, name, display_name and options (no extra query was made for it). The
    start queue hooks "start on first visit" in here; return the app's new status (for
    example ``"queued"``) when a start was requested, or None to report it stopped.
    """
    from apps_registry.control.first_visit import start_on_first_visit

    return start_on_first_visit(app.name, app.options or {})
