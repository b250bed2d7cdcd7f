"""Fixtures of the lifecycle cluster tests: the live API (as the control tests have it) and
queue workers that run moves with a short drain wait."""

from __future__ import annotations

import pytest

from tests.control.conftest import api  # noqa: F401  (the live supervisor's API, module-scoped)
from tests.control.test_queue import QueueWorkers

# The source keeps serving this long after a switch (plus the route cache's 1 s) in the tests.
MOVE_DRAIN = "0.5"


@pytest.fixture
def movers(cluster_logs, tmp_path, request):
    """Queue workers for moves and drains; their logs printed if the test failed."""
    pool = QueueWorkers(cluster_logs, tmp_path)
    pool.overrides = {"APP_MOVE_DRAIN_SECONDS": MOVE_DRAIN}
    failed_before = request.session.testsfailed
    yield pool
    if request.session.testsfailed > failed_before:
        print(pool.logs())
    pool.stop_all()
