"""Reading a request body: at most ``MAX_BODY_BYTES`` (413 beyond, refused on the declared
length before reading), a JSON object, no NUL characters; an empty body is ``{}``.

ninja's own body source reads ``request.body`` whole before any check, so the endpoints take
their body through ``JsonBody`` instead; pydantic then validates the object as usual."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django.http import HttpRequest
from ninja.params.models import Body, BodyModel

from apps_registry.api.errors import ApiError

if TYPE_CHECKING:
    from ninja import NinjaAPI

MAX_BODY_BYTES = 64 * 1024


def read_object(request: HttpRequest) -> dict[str, Any]:
    """The body as a JSON object, or ApiError (400 ``errors.body``, 413)."""
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


class _JsonBodyModel(BodyModel):
    @classmethod
    def get_request_data(cls, request: HttpRequest, api: NinjaAPI, path_params: dict[str, Any]) -> dict[str, Any]:
        data = read_object(request)
        varname = getattr(cls, "__read_from_single_attr__", None)
        return {varname: data} if varname else data


class JsonBody(Body):
    """``payload: Model = JsonBody(...)``: the body read by ``read_object``, validated as Model."""

    _model = _JsonBodyModel

    @classmethod
    def _param_source(cls) -> str:
        return "body"  # documented and validated as ninja's body
