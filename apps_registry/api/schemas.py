"""Request and response bodies of /api/v1/ as pydantic models: ninja validates requests with
them and generates the OpenAPI document (``/api/v1/openapi.json``) from them.

Checks that need the registry (does an environment exist, is the app placed on it) are made by
the endpoints; everything decidable from the body alone is decided here."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from django.core.exceptions import ValidationError as DjangoValidationError
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictStr,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from apps_registry.models import AppStatus, BackupStatus, EnvironmentStatus, JobStatus, StartMode, StepStatus
from apps_registry.names import (
    ADMIN_USERNAME_MAX_LENGTH,
    MAX_HOST_LENGTH,
    MAX_NAME_LENGTH,
    NAME_RE,
    clean_admin_username,
    normalise_host,
    validate_app_domain,
    validate_app_name,
)
from supervisor_site import catalogue

NAME_SCHEMA = {"type": "string", "pattern": NAME_RE.pattern, "maxLength": MAX_NAME_LENGTH}


def _refuse(kind: str, message: str) -> PydanticCustomError:
    # The message goes through the context, not the template: it may quote user input with braces.
    return PydanticCustomError(kind, "{message}", {"message": message})


def _valid_app_name(value: str) -> str:
    try:
        validate_app_name(value)
    except DjangoValidationError as error:
        raise _refuse("app_name", error.messages[0]) from None
    return value


def _distinct(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise _refuse("repeated_entry", "must not repeat an entry")
    return values


def _at_least_one(message: str) -> AfterValidator:
    def check(values: list[str]) -> list[str]:
        if not values:
            raise _refuse("empty", message)
        return values

    return AfterValidator(check)


def _known_modules(values: list[str]) -> list[str]:
    available = catalogue.modules()
    unknown = [m for m in values if m not in available]
    if unknown:
        raise _refuse("unknown_module", f"unknown module {unknown[0][:60]!r}; choose from {', '.join(available)}")
    return values


def _valid_admin_username(value: str) -> str:
    # The admin form's rule (apps_registry.names); the value comes back stripped.
    try:
        return clean_admin_username(value)
    except DjangoValidationError as error:
        raise _refuse("admin_username", error.messages[0]) from None


def _modules_enum(schema: dict[str, Any]) -> None:
    # Read when the document is generated, so it always lists the configured catalogue.
    schema["items"]["enum"] = list(catalogue.modules())


def _no_default(schema: dict[str, Any]) -> None:
    # An omitted optional field has no value, not null: keep "default": null out of the document.
    schema.pop("default", None)


def _optional(schema: dict[str, Any]) -> None:
    # Null is accepted as "omitted" but not advertised: document the non-null branch only.
    _no_default(schema)
    branches = [branch for branch in schema.pop("anyOf", []) if branch.get("type") != "null"]
    if branches:
        schema.update(branches[0])


def _no_default_min_one(schema: dict[str, Any]) -> None:
    _no_default(schema)
    schema["minItems"] = 1


def _optional_list(schema: dict[str, Any]) -> None:
    _optional(schema)
    schema.update(minItems=1, uniqueItems=True)


# The name as the request gives it (validated like the admin does) and as responses carry it.
AppNameIn = Annotated[StrictStr, AfterValidator(_valid_app_name), WithJsonSchema(NAME_SCHEMA)]


def _valid_domain(value: str) -> str:
    # The model's rule (apps_registry.names), after the same normalising the admin form does.
    domain = normalise_host(value)
    if not domain:
        return ""
    try:
        validate_app_domain(domain)
    except DjangoValidationError as error:
        raise _refuse("domain", error.messages[0]) from None
    return domain


# A host name, lower-cased; "" means none. Uniqueness is the registry's to check (409).
DomainIn = Annotated[StrictStr, Field(max_length=MAX_HOST_LENGTH + 10), AfterValidator(_valid_domain)]
_DOMAIN_DESCRIPTION = (
    "custom host name serving the app at / (e.g. crm.example.com): not under APPS_DOMAIN, not the "
    "supervisor's own host, unique; point its DNS at the supervisor"
)
AppName = Annotated[str, WithJsonSchema(NAME_SCHEMA)]
# Timestamps in the representation Python gives them (as before: microseconds, "+00:00").
Timestamp = Annotated[
    dt.datetime,
    PlainSerializer(lambda value: value.isoformat(), return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class _Body(BaseModel):
    """Request bodies: a field the model does not name is refused, never ignored."""

    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    """Responses: exactly the documented fields (``additionalProperties: false``). Plain pydantic,
    not ninja's Schema: its per-instance Python validator (for ORM objects, which the endpoints
    never return) made a thousand-app list ~10x slower to answer."""

    model_config = ConfigDict(extra="forbid")


class Error(_Out):
    error: str


class ValidationErrors(_Out):
    errors: dict[str, list[str]]


class Environment(_Out):
    name: str
    url: str
    proxy_url: str
    version: str
    status: EnvironmentStatus
    last_heartbeat: Timestamp | None
    draining: bool = Field(description="takes no new apps; the apps it runs are moving elsewhere")


class EnvironmentList(_Out):
    environments: list[Environment]


# The status shown (apps_registry.control.shown_status): the observed one, or "unknown" where
# the environment is not online.
ShownStatus = Literal[tuple([*AppStatus.values, "unknown"])]


class Observed(_Out):
    status: AppStatus = Field(description="what the worker last reported")
    at: Timestamp | None = Field(description="when that status was recorded")
    age_seconds: float | None = Field(description="how long ago, when the answer was made")
    environment_status: EnvironmentStatus


class App(_Out):
    name: AppName
    display_name: str
    domain: str | None = Field(description="custom domain serving the app at / (null: none)")
    environments: list[str]
    statuses: dict[str, ShownStatus] = Field(
        description="status shown per environment: never running on an environment that is not online"
    )
    observed: dict[str, Observed] = Field(description="the observed status per environment, and its age")
    errors: dict[str, str] = Field(description="last error per environment (only environments with one)")
    modules: list[str]
    start_mode: StartMode
    failover: bool = Field(description="started on another environment when its only one is offline past the grace")


class AppList(_Out):
    apps: list[App]


class InitialAdmin(_Out):
    username: str
    password: str


class AppCreated(App):
    # Optional fields are left out of the answer when unset (the endpoint uses exclude_unset).
    request_id: str = Field(None, description="present when start was true", json_schema_extra=_no_default)
    initial_admin: InitialAdmin = Field(
        None,
        description="present when the password was generated; shown only this once",
        json_schema_extra=_no_default,
    )


_FAILOVER_DESCRIPTION = (
    "opt in to failover: when the only environment the app runs on has been offline longer than "
    "APP_FAILOVER_GRACE, it is started on another online environment and runs there only"
)


class AppCreate(_Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "name": "sales_eu",
                "display_name": "Sales EU",
                "environments": ["env_a", "env_b"],
                "modules": ["contacts"],
                "start": False,
            }
        },
    )

    name: AppNameIn
    display_name: StrictStr = Field("", max_length=200)
    description: StrictStr = Field("", max_length=5000)
    domain: DomainIn | None = Field(None, description=_DOMAIN_DESCRIPTION, json_schema_extra=_optional)
    environments: Annotated[
        list[StrictStr],
        Field(json_schema_extra={"minItems": 1, "uniqueItems": True}),
        AfterValidator(_distinct),
        _at_least_one("choose at least one environment"),
    ]
    modules: Annotated[list[StrictStr], AfterValidator(_distinct), AfterValidator(_known_modules)] = Field(
        default_factory=list, json_schema_extra=_modules_enum
    )
    start: StrictBool = Field(False, description="queue a start right away")
    start_mode: StartMode = StartMode.MANUAL
    failover: StrictBool = Field(False, description=_FAILOVER_DESCRIPTION)
    admin_username: Annotated[
        StrictStr,
        # Documented here, checked by the shared rule alone, so that its message is the one given.
        Field(json_schema_extra={"maxLength": ADMIN_USERNAME_MAX_LENGTH, "pattern": r"^\s*[\w.@+-]+\s*$"}),
        AfterValidator(_valid_admin_username),
    ] = "admin"
    admin_password: Annotated[StrictStr, Field(min_length=1, max_length=200)] | None = Field(
        None,
        description="first admin's password; generated and returned once if omitted",
        json_schema_extra=_optional,
    )


_EDITABLE = ("display_name", "description", "domain", "environments", "failover")


class AppPatch(_Body):
    """A partial edit: the fields given change, the others stay. Null counts as omitted."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"display_name": "Sales Europe", "description": "EU sales team"}},
    )

    display_name: Annotated[StrictStr, Field(max_length=200)] | None = Field(
        None, description="empty: the app's name", json_schema_extra=_optional
    )
    description: Annotated[StrictStr, Field(max_length=5000)] | None = Field(None, json_schema_extra=_optional)
    domain: DomainIn | None = Field(
        None, description=_DOMAIN_DESCRIPTION + "; an empty string removes it", json_schema_extra=_optional
    )
    environments: (
        Annotated[
            list[StrictStr],
            AfterValidator(_distinct),
            _at_least_one("choose at least one environment"),
        ]
        | None
    ) = Field(
        None,
        description=(
            "place the app on exactly these environments: removed ones are stopped and unloaded there "
            "(data kept); if the app runs, it is started on the added ones through the start queue"
        ),
        json_schema_extra=_optional_list,
    )
    failover: StrictBool | None = Field(None, description=_FAILOVER_DESCRIPTION, json_schema_extra=_optional)
    force: StrictBool = Field(False, description="confirm an environments change that takes the app down (else 409)")

    @model_validator(mode="after")
    def _something_to_change(self) -> AppPatch:
        if all(getattr(self, field) is None for field in _EDITABLE):
            raise _refuse("nothing_to_change", f"name at least one of {', '.join(_EDITABLE)}")
        return self


class Operation(_Body):
    environments: Annotated[
        list[StrictStr],
        AfterValidator(_distinct),
        _at_least_one("must name at least one environment (or leave the field out)"),
    ] = Field(
        None,
        description="limit the operation to these of the app's environments (default: all)",
        json_schema_extra=_no_default_min_one,
    )


class Accepted(_Out):
    request_id: str
    app: AppName


class LogLine(_Out):
    id: str = Field(description="the line's stream id; pass it as since to get the lines after it")
    at: Timestamp = Field(description="when Redis received the line")
    environment: str
    level: Literal["info", "warning", "error"]
    message: str = Field(description="one line written by the worker (untrusted text, at most 500 characters)")


class LogLines(_Out):
    lines: list[LogLine] = Field(description="oldest first")


class JobStepOut(_Out):
    name: str
    status: Literal[tuple(StepStatus.values)]
    started_at: Timestamp | None
    finished_at: Timestamp | None
    error: str


class JobOut(_Out):
    id: str
    kind: str
    status: Literal[tuple(JobStatus.values)]
    steps: list[JobStepOut] = Field(description="in the order they run")


class MoveRequest(_Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"to": ["env_b"]}})

    to: Annotated[
        list[StrictStr],
        Field(json_schema_extra={"minItems": 1, "uniqueItems": True}),
        AfterValidator(_distinct),
        _at_least_one("name at least one environment"),
    ] = Field(description="the environments the app is on once moved (it leaves the others)")


class JobAccepted(_Out):
    job_id: str = Field(description="follow it with GET /jobs/<job_id>")


class DrainState(_Out):
    name: str
    draining: bool


class BackupOut(_Out):
    id: str
    created_at: Timestamp
    size: int = Field(description="bytes in the store (database dump, files, manifest)")
    checksum: str = Field(description="sha256 of the backup's manifest, which holds each part's sha256")
    status: Literal[tuple(BackupStatus.values)]
    verified_at: Timestamp | None = Field(description="when a restore drill last proved it restorable")


class BackupList(_Out):
    backups: list[BackupOut] = Field(description="newest first")


class RestoreIn(_Body):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=False,
        json_schema_extra={"example": {"backup": "00000000-0000-4000-8000-000000000000", "as": "sales_eu_copy"}},
    )

    backup: StrictStr = Field(
        max_length=60, description='the backup\'s id (GET /apps/{name}/backups), or "latest": the newest finished one'
    )
    as_: AppNameIn | None = Field(
        None,
        alias="as",
        description="restore into a new application of this name (a clone)",
        json_schema_extra=_optional,
    )
    environments: (
        Annotated[list[StrictStr], AfterValidator(_distinct), _at_least_one("choose at least one environment")] | None
    ) = Field(
        None,
        description="with \"as\": the clone's environments (default: the source's)",
        json_schema_extra=_optional_list,
    )


class Figure(_Out):
    requests: int = Field(description="requests served in the window")
    errors: int = Field(description="of which answered 5xx")
    requests_per_minute: float = Field(description="requests divided by the minutes the window has covered")
    p50_ms: float | None = Field(description="median duration in ms, from a bucket histogram (null: no requests)")
    error_rate: float | None = Field(description="errors / requests, 0 to 1 (null: no requests)")
    database_bytes: int | None = Field(description="the app's database size as the worker last measured it")
    database_measured_at: str | None = Field(description="when it was measured (ISO 8601, Redis's clock)")


class AppFiguresOut(_Out):
    window_seconds: int = Field(description="the window: the current minute and the four before it (Redis's clock)")
    total: Figure = Field(description="every environment together (the database is the app's one: newest size)")
    environments: dict[str, Figure]
