"""The browser stories' shared fixtures: Debian's Chromium (one per module), the operator they
sign in as, and a start-queue worker (the session cluster runs none of its own)."""

from __future__ import annotations

import pytest

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.processes import PYTHON, Process, manage

OPERATOR, OPERATOR_PASSWORD = "e2e_operator", "e2e-operator-pass"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"e2e: no browser: {CHROMIUM} is missing (scripts/test.sh installs Debian's chromium)", False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def operator(cluster):
    # Not ensure_admin: it does nothing once any superuser exists (another test's).
    env = {**cluster.supervisor_env, "DJANGO_SUPERUSER_PASSWORD": OPERATOR_PASSWORD}
    result = manage(["createsuperuser", "--no-input", "--username", OPERATOR, "--email", "e2e@example.com"], env)
    assert result.returncode == 0 or "already taken" in result.stderr, result.stderr
    return OPERATOR, OPERATOR_PASSWORD


@pytest.fixture
def queue_worker(cluster_logs, tmp_path):
    process = Process(
        "e2e-rqworker", [PYTHON, "manage.py", "rqworker", "app_starts"], cluster_logs.supervisor_env, tmp_path
    )
    process.start()
    yield process
    process.stop()
