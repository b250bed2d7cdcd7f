"""The discovery and process backends of this process, loaded by dotted path.

Settings name them (``APP_DISCOVERY_BACKEND``, ``APP_PROCESS_BACKEND``, derived from
APP_DISCOVERY_ADAPTER and APP_PROCESS_ADAPTER), as Django names its ``EMAIL_BACKEND``: the
registry hands committed changes to them without importing the control plane, which imports
the registry.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string


@cache
def _instance(dotted: str) -> Any:
    return import_string(dotted)()


def discovery() -> Any:
    """Where apps and environments are looked up: ``control.discovery``'s Local or Remote."""
    return _instance(settings.APP_DISCOVERY_BACKEND)


def runner() -> Any:
    """How apps are started and stopped: ``control.runners``' local or remote runner."""
    return _instance(settings.APP_PROCESS_BACKEND)
