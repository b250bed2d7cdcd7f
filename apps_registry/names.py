"""Validation of names that become URL segments, database names and Redis keys."""

import re

from django.core.exceptions import ValidationError

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_NAME_LENGTH = 40

# Names that collide with our own URLs, databases or well-known identifiers.
RESERVED_APP_NAMES = frozenset(
    {
        "admin",
        "api",
        "apps",
        "default",
        "django_rq",
        "healthz",
        "main",
        "media",
        "metrics",
        "postgres",
        "readyz",
        "root",
        "static",
        "supervisor",
        "template0",
        "template1",
        "test",
    }
)

NAME_RULE = "must start with a lowercase letter, then lowercase letters, digits or _, at most 40 characters"


def is_valid_name(value: object) -> bool:
    """True for a syntactically valid identifier (apps and environments share the rule)."""
    return isinstance(value, str) and bool(NAME_RE.fullmatch(value))


def validate_environment_name(value: str) -> None:
    if not is_valid_name(value):
        raise ValidationError(f"Environment name {value!r} {NAME_RULE}.", code="invalid_name")


def validate_app_name(value: str) -> None:
    if not is_valid_name(value):
        raise ValidationError(f"Application name {value!r} {NAME_RULE}.", code="invalid_name")
    if value in RESERVED_APP_NAMES:
        raise ValidationError(f"Application name {value!r} is reserved; choose another.", code="reserved_name")
