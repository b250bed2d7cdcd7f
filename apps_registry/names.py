"""Validation of names that become URL segments, database names and Redis keys, and of the
first admin username an app is created with (the admin form and the API share the rule)."""

import re

from django.contrib.auth.validators import UnicodeUsernameValidator
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


# The hosted app's own User model accepts these (Django's username rule): the first admin's
# name is refused up front rather than when the worker seeds the user.
ADMIN_USERNAME_MAX_LENGTH = 150
ADMIN_USERNAME_RE = re.compile(UnicodeUsernameValidator.regex)
ADMIN_USERNAME_RULE = (
    f"may hold letters, digits and @ . + - _ only (no spaces, markup or line breaks), "
    f"at most {ADMIN_USERNAME_MAX_LENGTH} characters"
)


def clean_admin_username(value: str) -> str:
    """The first admin username without surrounding white space; ValidationError otherwise."""
    username = value.strip()
    if not username or len(username) > ADMIN_USERNAME_MAX_LENGTH or not ADMIN_USERNAME_RE.match(username):
        shown = username if len(username) <= 60 else username[:60] + "…"
        raise ValidationError(f"First admin username {shown!r} {ADMIN_USERNAME_RULE}.", code="invalid_username")
    return username


REUSED_PASSWORD_MESSAGE = (
    "Choose a first admin password other than your own supervisor password: the app's workers "  # noqa: S105
    "receive a hash of it, through Redis."
)


def check_first_admin_password(password: str, supervisor_user: object | None) -> None:
    """ValidationError if the password chosen for an app's first admin is the acting supervisor
    user's own: its hash would travel to the workers in the app's spec. (Only the acting user's
    is checked: trying every supervisor user's hash would cost a PBKDF2 run each.)"""
    check = getattr(supervisor_user, "check_password", None)
    if password and check is not None and check(password):
        raise ValidationError(REUSED_PASSWORD_MESSAGE, code="supervisor_password")
