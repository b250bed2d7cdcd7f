"""The API's endpoints. Every change goes through ``apps_registry.registry.actions`` (audit trail with
``via="api"``), with the same permissions as the admin. Bad input always gets a 4xx with a
message: ``400 {"errors": {"<field>": ["..."]}}``, other failures ``{"error": "..."}``."""

from __future__ import annotations

import functools
import json
import logging
import secrets
from collections.abc import Callable

import redis
from django.contrib.auth.hashers import make_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from apps_registry.api.auth import AuthError, authenticate
from apps_registry.control import redis_client
from apps_registry.models import AppEnvironment, Application, Environment, StartMode
from apps_registry.names import is_valid_name, validate_app_name
from apps_registry.registry import actions, outbox
from supervisor_site import catalogue

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
CREATE_FIELDS = {
    "name",
    "display_name",
    "description",
    "environments",
    "modules",
    "start",
    "start_mode",
    "admin_username",
    "admin_password",
}
OPERATION_FIELDS = {"environments"}
OPERATIONS = {
    "start": (actions.request_start, "apps_registry.start_application"),
    "stop": (actions.request_stop, "apps_registry.stop_application"),
    "restart": (actions.request_restart, "apps_registry.restart_application"),
}


class ApiError(Exception):
    def __init__(self, status: int, message: str = "", errors: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.status = status
        self.payload = {"errors": errors} if errors is not None else {"error": message}


def _json(payload: dict, status: int = 200) -> JsonResponse:
    return JsonResponse(payload, status=status, json_dumps_params={"separators": (",", ":")})


def endpoint(*methods: str) -> Callable:
    """Authenticates with the bearer token, checks the method, turns ApiError into JSON."""

    def decorate(view: Callable) -> Callable:
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            try:
                if request.method not in methods:
                    response = _json({"error": f"method {request.method} not allowed here"}, 405)
                    response["Allow"] = ", ".join(methods)
                    return response
                try:
                    request.api_user = authenticate(request)
                except AuthError as error:
                    response = _json({"error": str(error)}, 401)
                    response["WWW-Authenticate"] = 'Bearer realm="api"'
                    return response
                return view(request, *args, **kwargs)
            except ApiError as error:
                return _json(error.payload, error.status)
            except redis.RedisError as error:
                # The registry change is committed but could not be passed on: say what became
                # of it (apps_registry.registry.outbox closed its audit entry) instead of a bare 500.
                log.warning("API %s %s: Redis unavailable: %s", request.method, request.path, error)
                if isinstance(error, outbox.NotDelivered):  # says what became of the request
                    return _json({"error": str(error)}, 503)
                message = (
                    "Redis (the command channel) is unavailable; the change is recorded in the registry "
                    "and published to the workers when the configuration cache is rebuilt"
                )
                return _json({"error": message}, 503)

        return wrapper

    return decorate


def _require(request: HttpRequest, *perms: str) -> None:
    missing = [perm for perm in perms if not request.api_user.has_perm(perm)]
    if missing:
        raise ApiError(403, f"permission denied: needs {', '.join(missing)}")


def _body(request: HttpRequest) -> dict:
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ApiError(400, errors={"body": ["invalid Content-Length"]}) from None
    if length > MAX_BODY_BYTES:
        raise ApiError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    raw = request.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, errors={"body": [f"malformed JSON: {error}"]}) from None
    if not isinstance(data, dict):
        raise ApiError(400, errors={"body": ["the body must be a JSON object"]})
    if _has_nul(data):  # PostgreSQL refuses NUL in text and JSON: a 400 here, not a 500 later
        raise ApiError(400, errors={"body": ["text must not contain NUL (\\u0000) characters"]})
    return data


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def _unknown_fields(data: dict, allowed: set[str], errors: dict[str, list[str]]) -> None:
    for field in sorted(set(data) - allowed):
        errors[str(field)[:100]] = ["unknown field"]


def _string_list(value: object, field: str, errors: dict[str, list[str]]) -> list[str] | None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        errors[field] = ["must be a list of strings"]
        return None
    if len(set(value)) != len(value):
        errors[field] = ["must not repeat an entry"]
        return None
    return value


def _ingest() -> None:
    """Apply pending worker events so the statuses returned are fresh."""
    if not redis_client.configured():
        return
    try:
        from apps_registry.control.ingest import ingest

        ingest()
    except Exception:  # stale statuses beat a failed read
        log.warning("event ingest failed", exc_info=True)


# --- Representations ---------------------------------------------------------------------------


def _applications():
    placements = AppEnvironment.objects.select_related("environment").order_by("environment__name")
    return Application.objects.prefetch_related(Prefetch("placements", queryset=placements)).order_by("name")


def apps_json(names: list[str] | None = None) -> list[dict]:
    """The App representation of every app (or of ``names``), from two flat queries: model
    instances and per-row prefetch querysets cost ~10x more at a thousand apps."""
    apps = Application.objects.order_by("name")
    placements = AppEnvironment.objects.order_by("environment__name")
    if names is not None:
        apps = apps.filter(name__in=names)
        placements = placements.filter(application__name__in=names)
    by_app: dict[int, list[tuple[str, str, str]]] = {}
    for app_id, env, status, error in placements.values_list("application_id", "environment__name", "status", "error"):
        by_app.setdefault(app_id, []).append((env, status, error))
    result = []
    for pk, name, display_name, options in apps.values_list("pk", "name", "display_name", "options"):
        rows = by_app.get(pk, [])
        options = options or {}
        result.append(
            {
                "name": name,
                "display_name": display_name,
                "environments": [env for env, _s, _e in rows],
                "statuses": {env: status for env, status, _e in rows},
                "errors": {env: error for env, _s, error in rows if error},
                "modules": list(options.get("modules", [])),
                "start_mode": options.get("start_mode", StartMode.MANUAL.value),
            }
        )
    return result


def _get_app(name: str) -> Application:
    app = _applications().filter(name=name).first() if is_valid_name(name) else None
    if app is None:
        raise ApiError(404, f"no application named {name[:60]!r}")
    return app


def _environment_json(envs: list[Environment]) -> list[dict]:
    from apps_registry.control import liveness

    statuses = liveness.environment_statuses(envs)
    rows = []
    for env in envs:
        status, seen = statuses.get(env.name, ("unknown", None))
        seen = seen or env.last_heartbeat
        rows.append(
            {
                "name": env.name,
                "url": env.url,
                "proxy_url": env.proxy_url,
                "version": env.version,
                "status": str(status),
                "last_heartbeat": seen.isoformat() if seen else None,
            }
        )
    return rows


# --- Endpoints ---------------------------------------------------------------------------------


@endpoint("GET")
def environments(request: HttpRequest) -> HttpResponse:
    _require(request, "apps_registry.view_environment")
    _ingest()  # registrations create environments
    return _json({"environments": _environment_json(list(Environment.objects.order_by("name")))})


@endpoint("GET", "POST")
def apps(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _create(request)
    _require(request, "apps_registry.view_application")
    _ingest()
    return _json({"apps": apps_json()})


@endpoint("GET", "DELETE")
def app_detail(request: HttpRequest, name: str) -> HttpResponse:
    if request.method == "DELETE":
        _require(request, "apps_registry.delete_application")
        drop = request.GET.get("drop_data", "false").lower()
        if drop not in ("true", "false", "1", "0"):
            raise ApiError(400, errors={"drop_data": ["must be true or false"]})
        app = _get_app(name)
        actions.delete_application(app, request.api_user, drop_data=drop in ("true", "1"), via="api")
        return HttpResponse(status=204)
    _require(request, "apps_registry.view_application")
    _ingest()
    app = _get_app(name)
    return _json(apps_json([app.name])[0])


@endpoint("POST")
def app_operation(request: HttpRequest, name: str, operation: str) -> HttpResponse:
    if operation not in OPERATIONS:
        raise ApiError(404, f"unknown operation {operation[:40]!r}: use start, stop or restart")
    action, perm = OPERATIONS[operation]
    _require(request, perm)
    app = _get_app(name)
    data = _body(request)
    errors: dict[str, list[str]] = {}
    _unknown_fields(data, OPERATION_FIELDS, errors)
    envs = None
    if "environments" in data:
        envs = _string_list(data["environments"], "environments", errors)
        placed = {p.environment.name for p in app.placements.all()}
        if envs is not None:
            strangers = [env for env in envs if env not in placed]
            if strangers:
                errors["environments"] = [f"{app.name} is not on environment {env[:60]!r}" for env in strangers]
            elif not envs:
                errors["environments"] = ["must name at least one environment (or leave the field out)"]
    if errors:
        raise ApiError(400, errors=errors)
    request_id = action(app, request.api_user, environments=envs, via="api")
    return _json({"request_id": request_id, "app": app.name}, 202)


def _validate_create(data: dict) -> tuple[dict, dict[str, list[str]]]:
    errors: dict[str, list[str]] = {}
    _unknown_fields(data, CREATE_FIELDS, errors)
    clean: dict = {}

    name = data.get("name")
    if name is None:
        errors["name"] = ["this field is required"]
    elif not isinstance(name, str):
        errors["name"] = ["must be a string"]
    else:
        try:
            validate_app_name(name)
            clean["name"] = name
        except ValidationError as error:
            errors["name"] = list(error.messages)

    for field, limit in (("display_name", 200), ("description", 5000)):
        value = data.get(field, "")
        if not isinstance(value, str):
            errors[field] = ["must be a string"]
        elif len(value) > limit:
            errors[field] = [f"at most {limit} characters"]
        else:
            clean[field] = value

    if "environments" not in data:
        errors["environments"] = ["this field is required"]
    else:
        names = _string_list(data["environments"], "environments", errors)
        if names is not None:
            found = {env.name: env for env in Environment.objects.filter(name__in=names)}
            unknown = [n for n in names if n not in found]
            if not names:
                errors["environments"] = ["choose at least one environment"]
            elif unknown:
                errors["environments"] = [f"unknown environment {n[:60]!r}" for n in unknown]
            else:
                clean["environments"] = [found[n] for n in names]

    modules = _string_list(data.get("modules", []), "modules", errors)
    if modules is not None:
        available = catalogue.modules()
        unknown = [m for m in modules if m not in available]
        if unknown:
            errors["modules"] = [f"unknown module {m[:60]!r}; choose from {', '.join(available)}" for m in unknown]
        clean["modules"] = modules

    start = data.get("start", False)
    if not isinstance(start, bool):
        errors["start"] = ["must be true or false"]
    clean["start"] = start is True

    start_mode = data.get("start_mode", StartMode.MANUAL.value)
    if start_mode not in StartMode.values:
        errors["start_mode"] = [f"must be one of {', '.join(StartMode.values)}"]
    clean["start_mode"] = start_mode

    username = data.get("admin_username", "admin")
    if not isinstance(username, str) or not username.strip() or len(username) > 150:
        errors["admin_username"] = ["must be a non-empty string of at most 150 characters"]
    clean["admin_username"] = username
    password = data.get("admin_password")
    if password is not None and (not isinstance(password, str) or not password or len(password) > 200):
        errors["admin_password"] = ["must be a non-empty string of at most 200 characters"]
    clean["admin_password"] = password
    return clean, errors


def _create(request: HttpRequest) -> HttpResponse:
    _require(request, "apps_registry.add_application")
    data = _body(request)
    _ingest()  # an environment that just registered may be named
    clean, errors = _validate_create(data)
    if errors:
        raise ApiError(400, errors=errors)
    if clean["start"]:
        _require(request, "apps_registry.start_application")
    if Application.objects.filter(name=clean["name"]).exists():
        raise ApiError(409, f"an application named {clean['name']!r} already exists")
    # Refused while Redis is down, before anything changes: the 503 could not carry the
    # generated admin password, and the workers could not learn about the app.
    outbox.require_channel("creation", clean["name"])
    password = clean["admin_password"]
    generated = password is None
    if generated:
        password = secrets.token_urlsafe(12)
    options = {
        "modules": clean["modules"],
        "start_mode": clean["start_mode"],
        "initial_admin": {"username": clean["admin_username"].strip(), "password_hash": make_password(password)},
    }
    try:
        app = actions.create_application(
            name=clean["name"],
            environments=clean["environments"],
            user=request.api_user,
            display_name=clean["display_name"],
            description=clean["description"],
            options=options,
            via="api",
        )
    except IntegrityError:
        raise ApiError(409, f"an application named {clean['name']!r} already exists") from None
    except ValidationError as error:
        raise ApiError(400, errors={k: list(v) for k, v in error.message_dict.items()}) from None
    payload = {}
    if clean["start"]:
        payload["request_id"] = actions.request_start(app, request.api_user, via="api")
    payload.update(apps_json([app.name])[0])
    if generated:
        # Shown once, as the admin does; only its hash is stored.
        payload["initial_admin"] = {"username": clean["admin_username"].strip(), "password": password}
    return _json(payload, 201)


@csrf_exempt
def not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    return _json({"error": f"no such API endpoint: {request.path[:100]}"}, 404)


def openapi(request: HttpRequest) -> HttpResponse:
    from apps_registry.api.openapi import document

    return _json(document())
