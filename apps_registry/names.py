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


# --- host names: an app's own origin (APPS_DOMAIN) and its custom domain ---------------------

# One DNS label (RFC 1123): letters, digits and inner hyphens, 1 to 63 characters.
_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
MAX_HOST_LENGTH = 253
HOST_RULE = (
    "must be a host name such as crm.example.com: dot-separated labels of letters, digits and "
    "inner hyphens (1 to 63 each), at least two labels, no port, no trailing dot"
)


def host_label(name: str) -> str:
    """The DNS label of app ``name``: ``sales_eu`` → ``sales-eu``. A label may not hold ``_``
    (Django refuses such a Host) and a name may not hold ``-``, so the mapping is one-to-one."""
    return name.replace("_", "-")


def name_from_label(label: str) -> str | None:
    """The app name a host label stands for, or None when no valid name maps to it."""
    if "_" in label:
        return None
    name = label.replace("-", "_")
    return name if is_valid_name(name) else None


def host_problem(value: str) -> str:
    """Why ``value`` (already lower-cased) is not a plain DNS host name ('' when it is one).
    IP addresses are refused too: an app's domain is a name someone points at us."""
    if not value or len(value) > MAX_HOST_LENGTH:
        return HOST_RULE
    labels = value.split(".")
    if len(labels) < 2 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        return HOST_RULE
    if labels[-1].isdigit():
        return "must be a host name, not an IP address"
    return ""


def normalise_host(value: str) -> str:
    """A host name as typed, compared and stored: stripped and lower-cased."""
    return value.strip().lower()


def is_under(host: str, domain: str) -> bool:
    """Whether ``host`` is ``domain`` or one of its sub-domains (both lower-case, no port)."""
    return bool(domain) and (host == domain or host.endswith("." + domain))


def validate_app_domain(value: str) -> None:
    """An app's custom domain: a host name (lower-case, as ``normalise_host`` leaves it), not
    under APPS_DOMAIN (those hosts are the apps' own names) and not one of the supervisor's
    own hosts (ALLOWED_HOSTS), which would take the admin's address away from it."""
    from django.conf import settings  # read at validation time: tests change APPS_DOMAIN
    from django.http.request import validate_host

    if value != normalise_host(value):
        raise ValidationError(f"Domain {value!r} must be lower-case, without spaces.", code="invalid_domain")
    problem = host_problem(value)
    if problem:
        raise ValidationError(f"Domain {value!r} {problem}.", code="invalid_domain")
    config = getattr(settings, "APP_CONFIG", None)
    apps_domain = getattr(config, "apps_domain", "")
    if apps_domain and is_under(value, apps_domain):
        raise ValidationError(
            f"Domain {value!r} is under APPS_DOMAIN ({apps_domain}), where every app already has "
            f"its own host; choose a domain outside it.",
            code="domain_under_apps_domain",
        )
    own = [host for host in getattr(config, "allowed_hosts", []) if host not in ("*", f".{apps_domain}")]
    if validate_host(value, own):
        raise ValidationError(
            f"Domain {value!r} is the supervisor's own host (ALLOWED_HOSTS); choose another.",
            code="supervisor_domain",
        )
