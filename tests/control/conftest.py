"""Fixtures the control plane's cluster tests share."""

from __future__ import annotations

import pytest

from tests.control.test_queue import ENVS, Api
from tests.support.processes import manage, wait_until


@pytest.fixture(scope="module")
def api(cluster) -> Api:
    """The live supervisor's API, for a superuser of its database, once both workers registered."""
    create = (
        "from django.contrib.auth.models import User\n"
        "if not User.objects.filter(username='queue_root').exists():\n"
        "    User.objects.create_superuser('queue_root', password='queue-root-pass')\n"
    )
    result = manage(["shell", "-c", create], cluster.supervisor_env)
    assert result.returncode == 0, result.stderr
    result = manage(["create_api_token", "queue_root"], cluster.supervisor_env)
    assert result.returncode == 0, result.stderr
    client = Api(cluster.url, result.stdout.strip())
    # The supervisor learns about the environments from their register events.
    wait_until(
        lambda: {e["name"] for e in client("GET", "/environments")[1]["environments"]} >= set(ENVS),
        timeout=30,
        interval=0.2,
        message="environments registered",
    )
    return client
