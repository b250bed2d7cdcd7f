"""Session-wide set-up: the real Redis database the tests own, clean-up of every PostgreSQL
database this run created, the named test users and the API client, and (tests/support/leaks.py)
the check that no process started by the run outlives it."""

import pytest

from tests.support import processes, services, users
from tests.support.api import ApiClient
from tests.support.cluster import cluster, cluster_logs  # noqa: F401  (real-process fixtures, started on first use)

pytest_plugins = ["tests.support.leaks"]

# Fixtures that start the real cluster: a test using one is a cluster test, whatever its module says.
CLUSTER_FIXTURES = {"cluster", "cluster_logs"}
# Helpers that start real servers: a module that imports one is a cluster module.
SERVER_HELPERS = (processes.gunicorn, processes.Process)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``cluster`` what starts real supervisor/worker processes, so that
    ``-m "not cluster"`` is the fast subset without every module having to remember it."""
    for item in items:
        module = getattr(item, "module", None)
        imports_helper = any(value in SERVER_HELPERS for value in vars(module).values()) if module else False
        if imports_helper or CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


def _check_no_server_started(item: pytest.Item, before: int, when: str) -> None:
    if processes.started > before and item.get_closest_marker("cluster") is None:
        raise AssertionError(
            f"{item.nodeid} started a real process during {when} but is not marked cluster: "
            'add pytestmark = pytest.mark.cluster, or ``-m "not cluster"`` is no longer the fast subset'
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    before = processes.started
    result = yield
    _check_no_server_started(item, before, "set-up")
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    before = processes.started
    result = yield
    _check_no_server_started(item, before, "the test")
    return result


@pytest.fixture(scope="session", autouse=True)
def _owned_services(django_db_blocker):
    services.claim_redis_db()
    # whitenoise warns on every client when STATIC_ROOT is missing (files come from finders).
    (services.storage_dir() / "static").mkdir(parents=True, exist_ok=True)
    yield
    services.release_redis_db()
    services.drop_run_databases()


@pytest.fixture
def redis_conn():
    """The supervisor's Redis client, emptied (but for our marker) after the test."""
    from apps_registry.control import ingest, redis_client

    client = redis_client.get()
    yield client
    for key in client.scan_iter(match=f"{services.RUN_ID}:*", count=1000):
        client.delete(key)
    # The events stream went with its consumer group: this process must create it again
    # rather than trust its cache (else the next ingest() reads nothing).
    ingest._group_ready.clear()


@pytest.fixture
def forget_app_aliases():
    """App aliases registered by a test leave this process with it (their databases are gone)."""
    from django.db import connections

    before = set(connections.settings)
    yield
    for alias in set(connections.settings) - before:
        connections[alias].close()
        del connections[alias]
        connections.settings.pop(alias)


# --- named users (tests/support/users.py) and the API client (tests/support/api.py) -------


@pytest.fixture
def operator(db):
    """Staff with every permission of the app (not a superuser)."""
    return users.operator()


@pytest.fixture
def staff_no_perms(db):
    """Staff who may log in to the admin but holds no permission."""
    return users.staff_no_perms()


@pytest.fixture
def viewer(db):
    """Staff with the app's view permissions only."""
    return users.viewer()


@pytest.fixture
def api_for(db):
    """``api_for(user, **options)``: an :class:`ApiClient` with a new token for ``user``."""
    return ApiClient.for_user


@pytest.fixture
def operator_api(operator) -> ApiClient:
    return ApiClient.for_user(operator)
