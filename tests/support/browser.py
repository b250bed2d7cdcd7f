"""Debian's Chromium for browser tests (driven by Playwright, never ``playwright install``), and
a way to drive it from tests that use the database."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def in_a_browser_thread(story: Callable[..., Any], *args: Any, timeout: float = 240) -> Any:
    """Run ``story(*args)`` in a thread of its own and return what it returns: Playwright's sync
    API runs an event loop in its thread, where pytest-django refuses database access."""
    found: list[Any] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            found.append(story(*args))
        except BaseException as error:
            failures.append(error)

    browsing = threading.Thread(target=run, name="chromium")
    browsing.start()
    browsing.join(timeout=timeout)
    assert not browsing.is_alive(), f"the browser story did not finish within {timeout:g} s"
    if failures:
        raise failures[0]
    return found[0] if found else None
