"""The OpenAPI 3.0 document of /api/v1/, served at /api/v1/openapi.json. The tests check
every response the API gives against it (``apps_registry.api.schema_check``)."""

from __future__ import annotations

import functools

from apps_registry.models import AppStatus, EnvironmentStatus, StartMode
from apps_registry.names import NAME_RE

_NAME = {"type": "string", "pattern": NAME_RE.pattern, "maxLength": 40}
_STRINGS = {"type": "array", "items": {"type": "string"}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_response(description: str, schema: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


_ERRORS = {
    "400": _json_response("Invalid input: a list of messages per field", "ValidationErrors"),
    "401": _json_response("Missing, invalid or revoked bearer token", "Error"),
    "403": _json_response("The token's user lacks the permission", "Error"),
}
_REDIS_DOWN = (
    "Redis unavailable after the change was committed; the message says what became of the request "
    "(a start stays queued and is enqueued again; a stop or restart was not delivered; a creation or a "
    "delete is refused)"
)
_NOT_FOUND = {"404": _json_response("No such application", "Error")}
_NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": _NAME, "example": "sales_eu"}

_APP_REQUIRED = ["name", "display_name", "environments", "statuses", "errors", "modules", "start_mode"]
_APP_PROPERTIES = {
    "name": _NAME,
    "display_name": {"type": "string"},
    "environments": _STRINGS,
    "statuses": {
        "type": "object",
        "description": "status per environment",
        "additionalProperties": {"type": "string", "enum": list(AppStatus.values)},
    },
    "errors": {
        "type": "object",
        "description": "last error per environment (only environments with one)",
        "additionalProperties": {"type": "string"},
    },
    "modules": _STRINGS,
    "start_mode": {"type": "string", "enum": list(StartMode.values)},
}

SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
        "additionalProperties": False,
    },
    "ValidationErrors": {
        "type": "object",
        "required": ["errors"],
        "properties": {"errors": {"type": "object", "additionalProperties": _STRINGS}},
        "additionalProperties": False,
    },
    "Environment": {
        "type": "object",
        "required": ["name", "url", "proxy_url", "version", "status", "last_heartbeat"],
        "properties": {
            "name": {"type": "string"},
            "url": {"type": "string"},
            "proxy_url": {"type": "string"},
            "version": {"type": "string"},
            "status": {"type": "string", "enum": list(EnvironmentStatus.values)},
            "last_heartbeat": {"type": "string", "format": "date-time", "nullable": True},
        },
        "additionalProperties": False,
    },
    "EnvironmentList": {
        "type": "object",
        "required": ["environments"],
        "properties": {"environments": {"type": "array", "items": _ref("Environment")}},
        "additionalProperties": False,
    },
    "App": {
        "type": "object",
        "required": _APP_REQUIRED,
        "properties": _APP_PROPERTIES,
        "additionalProperties": False,
    },
    "AppList": {
        "type": "object",
        "required": ["apps"],
        "properties": {"apps": {"type": "array", "items": _ref("App")}},
        "additionalProperties": False,
    },
    "AppCreate": {
        "type": "object",
        "required": ["name", "environments"],
        "properties": {
            "name": _NAME,
            "display_name": {"type": "string", "maxLength": 200},
            "description": {"type": "string", "maxLength": 5000},
            "environments": {**_STRINGS, "minItems": 1, "uniqueItems": True},
            "modules": {"type": "array", "items": {"type": "string", "enum": ["contacts", "tasks"]}},
            "start": {"type": "boolean", "default": False, "description": "queue a start right away"},
            "start_mode": {"type": "string", "enum": list(StartMode.values), "default": StartMode.MANUAL.value},
            "admin_username": {"type": "string", "maxLength": 150, "default": "admin"},
            "admin_password": {
                "type": "string",
                "maxLength": 200,
                "description": "first admin's password; generated and returned once if omitted",
            },
        },
        "additionalProperties": False,
        "example": {
            "name": "sales_eu",
            "display_name": "Sales EU",
            "environments": ["env_a", "env_b"],
            "modules": ["contacts"],
            "start": False,
        },
    },
    "AppCreated": {
        "type": "object",
        "required": _APP_REQUIRED,
        "properties": {
            **_APP_PROPERTIES,
            "request_id": {"type": "string", "description": "present when start was true"},
            "initial_admin": {
                "type": "object",
                "description": "present when the password was generated; shown only this once",
                "required": ["username", "password"],
                "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
    "Operation": {
        "type": "object",
        "properties": {
            "environments": {
                **_STRINGS,
                "minItems": 1,
                "description": "limit the operation to these of the app's environments (default: all)",
            }
        },
        "additionalProperties": False,
    },
    "Accepted": {
        "type": "object",
        "required": ["request_id", "app"],
        "properties": {"request_id": {"type": "string"}, "app": _NAME},
        "additionalProperties": False,
    },
}


def _operation(verb: str, permission: str) -> dict:
    return {
        "summary": f"{verb.capitalize()} the app on its environments",
        "description": (
            "Starts are queued and run one environment after another; stop and restart go out at once. "
            f"Needs apps_registry.{permission}. The last request wins."
        ),
        "parameters": [_NAME_PARAM],
        "requestBody": {"required": False, "content": {"application/json": {"schema": _ref("Operation")}}},
        "responses": {
            "202": _json_response("Accepted; follow it in the audit trail by request_id", "Accepted"),
            **_ERRORS,
            **_NOT_FOUND,
            "413": _json_response("Body too large", "Error"),
            "503": _json_response(_REDIS_DOWN, "Error"),
        },
    }


@functools.cache
def _document() -> dict:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "App Supervisor API",
            "version": "1",
            "description": "Manage applications and environments. Authenticate with "
            "`Authorization: Bearer <token>` (python manage.py create_api_token <username>).",
        },
        "servers": [{"url": "/api/v1"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
        },
        "security": [{"bearer": []}],
        "paths": {
            "/environments": {
                "get": {
                    "summary": "List environments with their liveness",
                    "responses": {"200": _json_response("Environments", "EnvironmentList"), **_ERRORS},
                }
            },
            "/apps": {
                "get": {
                    "summary": "List applications with their status per environment",
                    "responses": {"200": _json_response("Applications", "AppList"), **_ERRORS},
                },
                "post": {
                    "summary": "Create an application",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("AppCreate")}}},
                    "responses": {
                        "201": _json_response("Created", "AppCreated"),
                        **_ERRORS,
                        "409": _json_response("An application with this name exists", "Error"),
                        "413": _json_response("Body too large", "Error"),
                        "503": _json_response(_REDIS_DOWN, "Error"),
                    },
                },
            },
            "/apps/{name}": {
                "get": {
                    "summary": "One application",
                    "parameters": [_NAME_PARAM],
                    "responses": {"200": _json_response("The application", "App"), **_ERRORS, **_NOT_FOUND},
                },
                "delete": {
                    "summary": "Remove the application from its environments and the registry",
                    "parameters": [
                        _NAME_PARAM,
                        {
                            "name": "drop_data",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": ["true", "false", "1", "0"], "default": "false"},
                            "description": "also drop the app's database",
                        },
                    ],
                    "responses": {
                        "204": {"description": "Removed"},
                        **_ERRORS,
                        **_NOT_FOUND,
                        "503": _json_response(_REDIS_DOWN, "Error"),
                    },
                },
            },
            "/apps/{name}/start": {"post": _operation("start", "start_application")},
            "/apps/{name}/stop": {"post": _operation("stop", "stop_application")},
            "/apps/{name}/restart": {"post": _operation("restart", "restart_application")},
        },
    }


def document() -> dict:
    return _document()
