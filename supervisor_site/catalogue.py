"""The business modules an app can enable, read from one setting (``BUSINESS_MODULES``).

Every place that needs the list — the admin form, the API and its OpenAPI enum, the database
router, each hosted app's admin site, the demo app — reads it from here, so adding a module is
one line in ``supervisor_site/settings.py`` plus its package (see docs/hosting.md).
"""

from __future__ import annotations

from functools import cache
from importlib import import_module
from types import ModuleType

from django.conf import settings


@cache
def modules() -> dict[str, str]:
    """Module label (the Django app label, as stored in an app's options) → display name."""
    return {dotted.rsplit(".", 1)[-1]: name for dotted, name in settings.BUSINESS_MODULES.items()}


def labels() -> frozenset[str]:
    return frozenset(modules())


def choices() -> list[tuple[str, str]]:
    """(label, display name) in the setting's order, for forms."""
    return list(modules().items())


def admin_module(label: str) -> ModuleType:
    """The module's ``admin`` module; its ``register(site)`` adds the module to a hosted admin."""
    for dotted in settings.BUSINESS_MODULES:
        if dotted.rsplit(".", 1)[-1] == label:
            return import_module(f"{dotted}.admin")
    raise LookupError(f"no business module {label!r}")
