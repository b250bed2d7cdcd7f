"""Log formatting: one line per event carrying the app and environment names where known;
JSON when ``LOG_FORMAT=json``.

The app comes from, in order: ``extra={"app": ...}`` on the call, ``log_context(app=...)``
around the work, the hosted app serving the current request (its database alias), or the
``/apps/<name>/`` path of the request a record is about (Django's request and proxy logs pass
it as ``extra={"request": ...}``). The environment comes from ``extra``/``log_context`` or, on a
worker, from ENVIRONMENT_NAME.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from contextvars import ContextVar

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is kept.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

_context: ContextVar[tuple[str, str]] = ContextVar("log_context", default=("", ""))
_APP_PATH = re.compile(r"^/apps/([a-z][a-z0-9_]*)/")


@contextlib.contextmanager
def log_context(app: str = "", environment: str = "") -> Iterator[None]:
    """Tag every log line written inside the block with this app and/or environment."""
    old_app, old_env = _context.get()
    token = _context.set((app or old_app, environment or old_env))
    try:
        yield
    finally:
        _context.reset(token)


def _hosted_app() -> str:
    from worker_agent.hosting.db_router import APP_ALIAS_PREFIX, current_app_alias

    alias = current_app_alias.get()
    return alias[len(APP_ALIAS_PREFIX) :] if alias and alias.startswith(APP_ALIAS_PREFIX) else ""


def _app_of_request(record: logging.LogRecord) -> str:
    match = _APP_PATH.match(str(getattr(getattr(record, "request", None), "path", "") or ""))
    return match.group(1) if match else ""


def _own_environment() -> str:
    try:
        from django.conf import settings

        config = settings.APP_CONFIG
    except Exception:  # logging before settings are ready (management start-up)
        return ""
    return config.environment_name if config.mode == "worker" else ""


def context_of(record: logging.LogRecord) -> tuple[str, str]:
    """(app, environment) for this record; empty strings where unknown."""
    ctx_app, ctx_env = _context.get()
    app = getattr(record, "app", "") or ctx_app or _hosted_app() or _app_of_request(record)
    environment = getattr(record, "environment", "") or ctx_env or _own_environment()
    return str(app or ""), str(environment or "")


class TextFormatter(logging.Formatter):
    """``time level logger [app=X env=Y] message`` — the bracket only when something is known."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(context_tags)s%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        app, environment = context_of(record)
        tags = " ".join(tag for tag in (app and f"app={app}", environment and f"env={environment}") if tag)
        record.context_tags = f"[{tags}] " if tags else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        app, environment = context_of(record)
        payload = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "app": app or None,
            "environment": environment or None,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in payload:
                payload[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False)
