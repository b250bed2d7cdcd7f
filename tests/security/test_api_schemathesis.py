"""schemathesis against the API's own OpenAPI document, served by a real supervisor gunicorn
(PostgreSQL registry, real Redis): every operation gets generated requests — valid ones and,
where the document allows, ones schemathesis derives to break it — and every answer must be no
5xx, a documented status, the documented content type and a body matching the documented
schema. Bounded: at most ``EXAMPLES`` cases per operation and ``BUDGET_S`` seconds in all."""

from __future__ import annotations

import functools
import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.faults.harness import PrivateRedis
from tests.support import services
from tests.support.cluster import _create_database
from tests.support.processes import free_port, gunicorn, http_ok, manage, wait_until

pytestmark = pytest.mark.cluster

EXAMPLES = 25
BUDGET_S = 60.0
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

# Registry content the document's examples use: environments env_a and env_b, and one job. The
# examples create ``sales_eu``, start, stop, restart, edit and move it (off env_a: no target to
# check), drain and undrain env_a, and (last) delete it.
SETUP = """
from django.contrib.auth import get_user_model
from apps_registry.registry import actions
from apps_registry.models import ApiToken
user = get_user_model().objects.create_superuser("fuzz", "fuzz@example.com", "fuzz-password")
for name in ("env_a", "env_b"):
    actions.register_environment(name=name, url="http://127.0.0.1:9", version="test")
# The id the document's examples use for a job and a backup (of the example app sales_eu, which
# the POST /apps example creates), so that those examples reach their success path too.
import uuid
from apps_registry.models import Backup, Job
example = uuid.UUID("00000000-0000-4000-8000-000000000000")
Job.objects.create(id=example, kind="backup")
Backup.objects.create(id=example, app_name="sales_eu", status="succeeded", checksum="0" * 64)
token = ApiToken.issue(user, name="schemathesis")
print(token[1])
"""


@pytest.fixture(scope="module")
def live_api(tmp_path_factory):
    """``(base_url, token)`` of a supervisor gunicorn with its own database and a private
    redis-server (the start jobs it queues land in no queue another test's worker reads)."""
    storage = tmp_path_factory.mktemp("schemathesis")
    private = PrivateRedis(storage)
    private.start()
    env = {
        **services.supervisor_test_environ(),
        "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",
        "DB_DATABASE": f"{services.RUN_ID}_schemathesis",
        "APP_SUPERVISOR_REDIS_URL": private.url,
        "APP_COMMAND_REDIS_URL": private.url,
        "APP_STORAGE_DIR": str(storage),
    }
    web = None
    try:
        _create_database(env["DB_DATABASE"])
        migration = manage(["migrate", "--no-input", "-v", "0"], env, timeout=180)
        assert migration.returncode == 0, migration.stdout + migration.stderr
        setup = manage(["shell", "-c", SETUP], env)
        assert setup.returncode == 0, setup.stdout + setup.stderr
        token = setup.stdout.strip().splitlines()[-1]
        port = free_port()
        web = gunicorn("schemathesis-supervisor", port, env, storage, workers=1, threads=4).start()
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(f"{base}/healthz"), timeout=60, interval=0.1, message="supervisor web")
        yield base, token
    finally:
        if web is not None:
            web.stop()
        private.kill()


def test_every_operation_conforms_to_the_openapi_document(live_api):
    base, token = live_api
    schema = schemathesis.openapi.from_url(f"{base}/api/v1/openapi.json", timeout=10)
    # Deleting last, so the operations before it find the example app.
    operations = sorted((result.ok() for result in schema.get_all_operations()), key=lambda op: op.method == "delete")
    assert len(operations) == 19, [op.label for op in operations]
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + BUDGET_S
    per_operation = BUDGET_S / len(operations)
    calls: dict[str, set[int]] = {}
    failures: dict[str, str] = {}
    for operation in operations:
        stop_at = min(deadline, time.monotonic() + per_operation)
        # First the document's own example (one case), then generated ones, valid and invalid.
        explicit = operation.get_strategies_from_examples()
        generated = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in GenerationMode))
        try:
            run = functools.partial(_fuzz, base_url=f"{base}/api/v1", session=session, headers=headers, stop_at=stop_at)
            seen = run(st.one_of(*explicit), 1) if explicit else set()
            calls[operation.label] = seen | run(generated, EXAMPLES - len(explicit[:1]))
        except Exception as error:  # collect every operation's failure, then report them all
            failures[operation.label] = f"{type(error).__name__}: {error}"[:3000]
    print("statuses per operation:", calls)
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    assert time.monotonic() < deadline + 15, "the run overran its time budget"
    # The document's examples reached the success path of every operation, not only its 4xx.
    success = {"GET": 200, "POST /apps": 201, "PATCH": 200, "DELETE": 204, "POST /environments/{name}/undrain": 200}
    for label, seen in calls.items():
        wanted = success.get(label, success.get(label.split()[0], 202))
        assert wanted in seen, (label, sorted(seen))


def _fuzz(
    strategy: st.SearchStrategy,
    examples: int,
    *,
    base_url: str,
    session: requests.Session,
    headers: dict,
    stop_at: float,
) -> set[int]:
    """Run up to ``examples`` cases drawn from ``strategy`` (fewer if ``stop_at`` passes);
    returns the statuses seen."""
    seen: set[int] = set()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the failure message says enough
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case) -> None:
        if time.monotonic() > stop_at:
            return
        response = case.call(base_url=base_url, session=session, headers=headers)
        seen.add(response.status_code)
        case.validate_response(response, checks=CHECKS)

    check()
    return seen
