"""How the API answers a failure: ``400 {"errors": {"<field>": ["..."]}}`` for bad input, else
``{"error": "..."}`` with the status. ninja's own shapes (``{"detail": ...}``, 422) never reach a
client: the handlers installed here convert them."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import redis
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError

from apps_registry.api.auth import AuthError, PermissionMissing
from apps_registry.models import Application
from apps_registry.registry import outbox

log = logging.getLogger(__name__)

REDIS_DOWN = (
    "Redis (the command channel) is unavailable; the change is recorded in the registry "
    "and published to the workers when the configuration cache is rebuilt"
)

# pydantic's error types in the words the API has always used; the context fills the braces.
_MESSAGES = {
    "missing": "this field is required",
    "extra_forbidden": "unknown field",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be a list of strings",
    "string_too_long": "at most {max_length} characters",
    "string_too_short": "must not be empty",
    "too_short": "must have at least {min_length} entry",
    "enum": "must be one of {expected}",
    "literal_error": "must be one of {expected}",
}


class ApiError(Exception):
    """Raised by an endpoint to answer ``status`` with ``{"error": message}`` or, given
    ``errors``, ``{"errors": errors}``."""

    def __init__(self, status: int, message: str = "", errors: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.status = status
        self.payload: dict[str, Any] = {"errors": errors} if errors is not None else {"error": message}


def field_errors(errors: list[dict[str, Any]]) -> dict[str, list[str]]:
    """ninja's validation errors (pydantic's, ``loc`` prefixed by the parameter source) as
    ``{"<field>": ["message", ...]}``, the field being the body's top-level key or the
    query/path parameter."""
    result: dict[str, list[str]] = {}
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        # body: ("body", <parameter>, <field>, ...); query and path: (<source>, <name>, ...)
        depth = 2 if loc and loc[0] == "body" else 1
        field = loc[depth][:100] if len(loc) > depth else "body"
        kind = error.get("type", "")
        if kind == "string_type" and len(loc) > depth + 1:
            message = _MESSAGES["list_type"]  # an item of a list of strings
        elif kind in ("enum", "literal_error"):  # pydantic says "'a' or 'b'"; the API says "a, b"
            expected = str(error.get("ctx", {}).get("expected", ""))
            message = _MESSAGES[kind].format(expected=expected.replace("'", "").replace(" or ", ", "))
        elif kind in _MESSAGES:
            message = _MESSAGES[kind].format(**error.get("ctx", {}))
        else:
            message = str(error.get("msg", "invalid value"))
        messages = result.setdefault(field, [])
        if message not in messages:
            messages.append(message)
    return result


def install(api: NinjaAPI) -> None:
    """Register the API's exception handlers on ``api``."""

    def answer(request: HttpRequest, payload: dict[str, Any], status: int) -> HttpResponse:
        return api.create_response(request, payload, status=status)

    @api.exception_handler(ApiError)
    def api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
        return answer(request, exc.payload, exc.status)

    @api.exception_handler(AuthError)
    def unauthenticated(request: HttpRequest, exc: AuthError) -> HttpResponse:
        response = answer(request, {"error": str(exc)}, 401)
        response["WWW-Authenticate"] = 'Bearer realm="api"'
        return response

    @api.exception_handler(PermissionMissing)
    def forbidden(request: HttpRequest, exc: PermissionMissing) -> HttpResponse:
        return answer(request, {"error": str(exc)}, 403)

    @api.exception_handler(AuthenticationError)
    def no_credentials(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
        return unauthenticated(request, AuthError("authentication required: send Authorization: Bearer <token>"))

    @api.exception_handler(NinjaValidationError)
    def invalid(request: HttpRequest, exc: NinjaValidationError) -> HttpResponse:
        return answer(request, {"errors": field_errors(exc.errors)}, 400)

    @api.exception_handler(HttpError)
    def http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
        return answer(request, {"error": str(exc)}, exc.status_code)

    @api.exception_handler(Application.DoesNotExist)
    def app_gone(request: HttpRequest, exc: Application.DoesNotExist) -> HttpResponse:
        # Deleted by a concurrent request between our read and our row lock: as absent as if
        # it had never been (registry.applications.ApplicationGone).
        return answer(request, {"error": str(exc) or "no such application"}, 404)

    @api.exception_handler(Http404)
    def not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
        return answer(request, {"error": str(exc) or "not found"}, 404)

    @api.exception_handler(redis.RedisError)
    def redis_down(request: HttpRequest, exc: redis.RedisError) -> HttpResponse:
        # The registry change is committed but could not be passed on: say what became of it
        # (apps_registry.registry.outbox closed its audit entry) instead of a bare 500.
        log.warning("API %s %s: Redis unavailable: %s", request.method, request.path, exc)
        message = str(exc) if isinstance(exc, outbox.NotDelivered) else REDIS_DOWN
        return answer(request, {"error": message}, 503)


def _json(payload: dict[str, Any], status: int) -> JsonResponse:
    return JsonResponse(payload, status=status, json_dumps_params={"separators": (",", ":")})


@csrf_exempt
def not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Any path under /api/v1/ that no endpoint has."""
    return _json({"error": f"no such API endpoint: {request.path[:100]}"}, 404)


def json_method_not_allowed(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Wrap one of ninja's path views so a method it has no operation for gets JSON, as every
    other failure does (ninja answers a plain-text 405)."""

    @functools.wraps(view)  # keeps csrf_exempt
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        if isinstance(response, HttpResponseNotAllowed):
            allowed = ", ".join(sorted(m.strip() for m in response["Allow"].split(",")))
            response = _json({"error": f"method {request.method} not allowed here"}, 405)
            response["Allow"] = allowed
        return response

    return wrapper
