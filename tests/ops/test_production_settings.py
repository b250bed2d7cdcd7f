"""The production switch APP_HTTPS: ``manage.py check --deploy`` reports no issue for the
documented production configurations (docs/security.md, "Production switch") once it is on,
and what it turns on behaves: HTTP redirected to HTTPS except the health probes, HSTS, Secure
cookies, and a TLS terminator's ``X-Forwarded-Proto`` believed from a trusted proxy only."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.test import Client, override_settings

from supervisor_site.https import https_settings
from tests.ops.test_config import COMPOSE_DB, SUPERVISOR, WORKER, check_environ
from tests.support.processes import manage
from tests.support.users import OPERATOR, PASSWORD

# docs/security.md's production sets: the document's variables, a real secret and host names.
PRODUCTION = {
    "supervisor": {
        **SUPERVISOR,
        **COMPOSE_DB,
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "supervisor.example.com",
        "TRUSTED_PROXY_IPS": "10.0.0.2",
    },
    "worker": {
        **WORKER,
        **COMPOSE_DB,
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "worker_a",
        "TRUSTED_PROXY_IPS": "10.0.0.3",
    },
}


@pytest.fixture(scope="module")
def deploy_checks(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("deploy")
    cases = {
        (role, https): {**variables, "APP_HTTPS": https}
        for role, variables in PRODUCTION.items()
        for https in ("true", "false")
    }

    def run(item):
        (role, https), variables = item
        environ = check_environ(variables, base / f"{role}-{https}")
        return (role, https), manage(["check", "--deploy", "--fail-level", "WARNING"], environ, timeout=60)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(run, cases.items()))


@pytest.mark.parametrize("role", sorted(PRODUCTION))
def test_check_deploy_reports_no_issue_with_app_https(deploy_checks, role):
    result = deploy_checks[(role, "true")]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


@pytest.mark.parametrize("role", sorted(PRODUCTION))
def test_without_the_switch_check_deploy_names_what_is_missing(deploy_checks, role):
    result = deploy_checks[(role, "false")]
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W010"):
        assert warning in result.stderr, result.stderr


HTTPS = https_settings(True)


@pytest.mark.django_db
@override_settings(**HTTPS)
def test_plain_http_is_redirected_but_probes_answer_as_they_are():
    client = Client()
    response = client.get("/admin/login/", REMOTE_ADDR="192.0.2.1")
    assert response.status_code == 301
    assert response["Location"] == "https://testserver/admin/login/"
    for probe in ("/healthz", "/readyz"):
        assert client.get(probe, REMOTE_ADDR="192.0.2.1").status_code in (200, 503), probe
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.1").status_code != 301


@pytest.mark.django_db
@override_settings(**HTTPS)
def test_a_terminators_forwarded_proto_counts_only_from_a_trusted_proxy(operator):
    terminated = {"HTTP_X_FORWARDED_PROTO": "https", "HTTP_X_FORWARDED_FOR": "198.51.100.4"}
    # Loopback is in TRUSTED_PROXY_IPS (the default): served, with HSTS and Secure cookies.
    client = Client()
    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": OPERATOR, "password": PASSWORD},
        REMOTE_ADDR="127.0.0.1",
        **terminated,
    )
    assert response.status_code == 302, response.status_code
    assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    session = response.cookies["sessionid"]
    assert session["secure"] and session["httponly"] and session["path"] == "/admin/"
    # The same header from anybody else is not believed: redirected to HTTPS, nothing served.
    spoofed = Client().get("/admin/login/", REMOTE_ADDR="192.0.2.1", **terminated)
    assert spoofed.status_code == 301 and spoofed["Location"].startswith("https://")
    assert "Strict-Transport-Security" not in spoofed
