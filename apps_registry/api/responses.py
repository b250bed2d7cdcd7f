"""The responses each endpoint documents: its success, then the failures it can answer, each
with the same body model and description everywhere in the OpenAPI document."""

from __future__ import annotations

from typing import Any

from apps_registry.api.schemas import Error, ValidationErrors

REDIS_DOWN_DESCRIPTION = (
    "Redis unavailable after the change was committed; the message says what became of the request "
    "(a start stays queued and is enqueued again; a stop or restart was not delivered; a creation or a "
    "delete is refused)"
)
_FAILURES = {
    400: "Invalid input: a list of messages per field",
    401: "Missing, invalid or revoked bearer token",
    403: "The token's user lacks the permission",
    404: "No such application",
    409: "Conflict: an application with this name exists (create), or the edit takes the app down and "
    "force was not given (edit)",
    413: "Body too large",
    503: REDIS_DOWN_DESCRIPTION,
}
# Every endpoint authenticates and may refuse its input (a query or body field).
_ALWAYS = (400, 401, 403)


def documented(
    status: int,
    model: type | None,
    description: str,
    *failures: int,
    also: dict[int, tuple[type | None, str]] | None = None,
) -> dict[str, Any]:
    """``response`` and ``openapi_extra`` arguments for a route: ``status`` with ``model`` (None:
    no body), the other successes ``also`` (``{status: (model, description)}``), the failures
    every endpoint has, and ``failures``."""
    codes = (*_ALWAYS, *failures)
    successes = {status: (model, description), **(also or {})}
    response: dict[int, Any] = {code: body for code, (body, _text) in successes.items()}
    response.update({code: ValidationErrors if code == 400 else Error for code in codes})
    descriptions = {
        **{code: text for code, (_body, text) in successes.items()},
        **{code: _FAILURES[code] for code in codes},
    }
    return {
        "response": response,
        "openapi_extra": {"responses": {code: {"description": text} for code, text in descriptions.items()}},
    }
