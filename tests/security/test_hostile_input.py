"""Hostile input against the supervisor, in-process with the real PostgreSQL and Redis and a
real loopback upstream: fuzzed names and paths (registry, API, proxy), oversized bodies,
CSRF on admin actions, staff without permissions, the supervisor's credentials and cookies
never reaching a worker."""

from __future__ import annotations

import json
import re
import string
from urllib.parse import quote

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from apps_registry.api.body import MAX_BODY_BYTES
from apps_registry.models import ApiToken, AppEnvironment, Application, AppStatus, AuditEntry, Environment
from apps_registry.names import NAME_RE, RESERVED_APP_NAMES, is_valid_name, validate_app_name
from apps_registry.registry import actions
from tests.support.users import PASSWORD, create_user


def _operations_audited():
    """Audit entries of operations on apps, other than creating them. Environments registering
    (the shared cluster's workers, whose entries other tests commit) are not this file's concern."""
    return AuditEntry.objects.exclude(action="create").exclude(action__startswith="environment_")


pytestmark = pytest.mark.django_db
FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

# Pieces a hostile name or path is made of: separators, dot segments in every encoding,
# control characters, look-alike letters, SQL and Redis key punctuation, shell metacharacters.
HOSTILE_PIECES = [
    "..",
    ".",
    "/",
    "\\",
    "%2e",
    "%2E",
    "%2f",
    "%2F",
    "%252f",
    "%5c",
    "%00",
    "\x00",
    "\t",
    "\n",
    "\r",
    " ",
    "'",
    '"',
    ";",
    ":",
    "*",
    "?",
    "#",
    "$",
    "`",
    "|",
    "&",
    "<",
    ">",
    "{",
    "}",
    "é",
    "ı",
    "К",
    "\u202e",
    "\ufeff",
    "A",
    "-",
    "DROP TABLE x;--",
    "../../etc/passwd",
]
hostile_text = st.lists(st.sampled_from(HOSTILE_PIECES) | st.text(max_size=4), min_size=1, max_size=6).map("".join)


def _api(user: User) -> Client:
    _token, raw = ApiToken.issue(user)
    return Client(HTTP_AUTHORIZATION=f"Bearer {raw}")


@pytest.fixture
def envs():
    now = timezone.now()
    return [
        Environment.objects.create(name="env_a", url="http://127.0.0.1:9", last_heartbeat=now),
        Environment.objects.create(name="env_b", url="http://127.0.0.1:9", last_heartbeat=now),
    ]


@pytest.fixture
def root_api() -> Client:
    return _api(create_user("root", superuser=True))


@pytest.fixture
def proxied(recorder):
    """App ``crm`` running on ``env_a``, whose URL is the recording upstream."""
    url, seen = recorder
    env = Environment.objects.create(name="env_a", url=url, last_heartbeat=timezone.now())
    app = actions.create_application(name="crm", environments=[env], options={"modules": ["contacts"]})
    assert actions.record_app_status("crm", "env_a", AppStatus.RUNNING)
    seen.clear()
    return app, seen


# --- Names: registry and API ------------------------------------------------------------------


@given(value=st.text(max_size=60) | hostile_text)
@example(value="a" * 41)
@example(value="crm\n")
@example(value="Crm")
@example(value="crm-1")
@example(value="ﬁle")  # a ligature that NFKC-normalises to valid ASCII
def test_registry_accepts_exactly_the_name_rule(value):
    expected = bool(re.fullmatch(r"[a-z][a-z0-9_]{0,39}", value, flags=re.ASCII)) and "\n" not in value
    assert is_valid_name(value) is expected
    assert bool(NAME_RE.fullmatch(value)) is expected
    try:
        validate_app_name(value)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted is (expected and value not in RESERVED_APP_NAMES)


@pytest.mark.parametrize("value", [None, 5, 5.0, b"crm", ["crm"], {"crm": 1}, True])
def test_non_strings_are_never_valid_names(value):
    assert is_valid_name(value) is False


@FUZZ
@given(name=hostile_text | st.sampled_from(sorted(RESERVED_APP_NAMES)))
def test_api_create_with_hostile_names_is_400_never_500(envs, root_api, name):
    assume(not is_valid_name(name) or name in RESERVED_APP_NAMES)
    client = root_api
    body = {"name": name, "environments": ["env_a"], "modules": ["contacts"]}
    response = client.post("/api/v1/apps", json.dumps(body), content_type="application/json")
    assert response.status_code == 400, response.content
    assert set(response.json()["errors"]) & {"name", "body"}
    assert not Application.objects.exists()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=hostile_text | st.sampled_from(sorted(RESERVED_APP_NAMES)))
def test_admin_add_form_with_hostile_names_is_refused_never_500(envs, name):
    # Form fields strip surrounding white space, as every Django form does: "h8\n" is the valid "h8".
    assume(not is_valid_name(name.strip()) or name.strip() in RESERVED_APP_NAMES)
    browser = Client()
    browser.force_login(
        User.objects.get_or_create(username="root", defaults={"is_staff": True, "is_superuser": True})[0]
    )
    form = {
        "name": name,
        "display_name": "x",
        "target_environments": [envs[0].pk],
        "start_mode": "manual",
        "admin_username": "admin",
    }
    response = browser.post("/admin/apps_registry/application/add/", form)
    assert response.status_code == 200, response.status_code  # the form again, with its errors
    assert b"errorlist" in response.content
    assert not Application.objects.exists()


@FUZZ
@given(value=st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(), st.lists(st.text())))
def test_api_create_with_non_string_names_is_400(envs, root_api, value):
    client = root_api
    body = {"name": value, "environments": ["env_a"]}
    response = client.post("/api/v1/apps", json.dumps(body), content_type="application/json")
    assert response.status_code == 400, response.content
    assert not Application.objects.exists()


@FUZZ
@given(env=hostile_text)
def test_api_create_with_hostile_environment_names_is_400(envs, root_api, env):
    assume(env not in ("env_a", "env_b"))
    client = root_api
    body = {"name": "fine", "environments": [env]}
    response = client.post("/api/v1/apps", json.dumps(body), content_type="application/json")
    assert response.status_code == 400, response.content
    assert set(response.json()["errors"]) & {"environments", "body"}
    assert not Application.objects.exists()


@FUZZ
@given(
    field=st.sampled_from(["display_name", "description", "admin_username", "admin_password", "modules"]),
    value=hostile_text,
)
@example(field="display_name", value="\x00")
@example(field="admin_username", value="a\x00b")
def test_api_create_with_hostile_text_fields_is_4xx_never_500(envs, root_api, field, value):
    client = root_api
    body = {"name": "fine", "environments": ["env_a"], field: [value] if field == "modules" else value}
    response = client.post("/api/v1/apps", json.dumps(body), content_type="application/json")
    assert response.status_code in (201, 400), response.content
    if response.status_code == 201:
        Application.objects.filter(name="fine").delete()


@FUZZ
@given(name=hostile_text, operation=st.sampled_from(["", "/start", "/stop", "/restart", "/../start", "/x"]))
@example(name="\n", operation="/../start")
def test_api_paths_with_hostile_names_are_json_4xx(envs, root_api, name, operation):
    client = root_api
    actions.create_application(name="shop", environments=envs) if not Application.objects.exists() else None
    path = f"/api/v1/apps/{quote(name, safe='')}{operation}"
    for method in ("get", "post", "delete"):
        response = getattr(client, method)(path)
        assert 400 <= response.status_code < 500, (method, path, response.status_code, response.content)
        assert response["Content-Type"].startswith("application/json")
    assert set(Application.objects.values_list("name", flat=True)) == {"shop"}
    assert not _operations_audited().exists()


# --- Paths: the proxy ------------------------------------------------------------------------

_SAFE_SEGMENT = st.text(alphabet=string.ascii_letters + string.digits + "-_~", min_size=1, max_size=6)
_HOSTILE_SEGMENT = st.sampled_from(
    [
        "..",
        ".",
        "%2e%2e",
        "%2E%2e",
        ".%2e",
        "%2e",
        "a%2fb",
        "a%2Fb",
        "%252f",
        "%252e%252e",
        "a%5cb",
        "a\\b",
        "a%00b",
        "a\x01b",
        "a\x7fb",
        "",
    ]
)


@FUZZ
@given(
    before=st.lists(_SAFE_SEGMENT, max_size=3),
    hostile=_HOSTILE_SEGMENT,
    after=st.lists(_SAFE_SEGMENT, min_size=1, max_size=3),
)
def test_hostile_proxy_paths_are_404_and_never_reach_the_worker(proxied, before, hostile, after):
    _app, seen = proxied
    raw = "/apps/crm/" + "/".join([*before, hostile, *after])
    # RAW_URI is what gunicorn hands over: the path exactly as the client sent it.
    response = Client().get(raw, RAW_URI=raw)
    assert response.status_code == 404, (raw, response.status_code)
    assert seen == [], f"{raw!r} reached the worker as {seen[0]['path']!r}"


@FUZZ
@given(name=hostile_text, rest=st.lists(_SAFE_SEGMENT, max_size=2).map("/".join))
def test_hostile_app_names_in_proxy_paths_are_404_and_never_reach_the_worker(proxied, name, rest):
    _app, seen = proxied
    assume(name != "crm")
    raw = f"/apps/{quote(name, safe='/%')}/{rest}"
    response = Client().get(raw, RAW_URI=raw)
    assert response.status_code in (404, 301, 302), (raw, response.status_code)
    if response.status_code != 404:  # "/apps/<name>" gets a slash added, and is then refused
        assert not response["Location"].startswith("/apps/crm/"), response["Location"]
    assert seen == [], f"{raw!r} reached the worker as {seen[0]['path']!r}"


def test_a_well_formed_path_does_reach_the_worker(proxied):
    """The control for the two tests above: the upstream does record what it is sent."""
    _app, seen = proxied
    response = Client().get("/apps/crm/admin/x/?q=1", RAW_URI="/apps/crm/admin/x/?q=1")
    assert response.status_code == 200 and response.content == b"recorded"
    assert [r["path"] for r in seen] == ["/apps/crm/admin/x/?q=1"]


# --- Credentials and cookies -------------------------------------------------------------------

_cookie_name = st.text(alphabet=string.ascii_letters + string.digits + "_", min_size=1, max_size=12)


@FUZZ
@given(
    others=st.dictionaries(
        _cookie_name, st.text(alphabet=string.ascii_letters + string.digits, max_size=8), max_size=4
    ),
    own=st.dictionaries(
        _cookie_name.map(lambda n: f"app_crm_{n}"), st.text(alphabet=string.ascii_letters, max_size=8), max_size=3
    ),
)
def test_supervisor_cookies_and_credentials_never_reach_a_worker(proxied, others, own):
    _app, seen = proxied
    supervisor = {"sessionid": "SUPERVISOR-SESSION", "csrftoken": "SUPERVISOR-CSRF", "appsup_env": "env_a"}
    foreign = {"app_shop_sessionid": "OTHER-APP", "app_crmx_sessionid": "OTHER-APP2"}
    jar = {**others, **supervisor, **foreign, **own}
    cookie_header = "; ".join(f"{k}={v}" for k, v in jar.items())
    seen.clear()
    response = Client().get(
        "/apps/crm/admin/",
        HTTP_COOKIE=cookie_header,
        HTTP_AUTHORIZATION="Bearer SUPERVISOR-TOKEN",
        HTTP_PROXY_AUTHORIZATION="Basic U1VQRVJWSVNPUg==",
        HTTP_X_REAL_IP="6.6.6.6",
    )
    assert response.status_code == 200
    (upstream,) = seen
    headers = {k.lower(): v for k, v in upstream["headers"].items()}
    forwarded = headers.get("cookie", "")
    got = dict(part.split("=", 1) for part in forwarded.split("; ") if part)
    assert got == {k: v for k, v in jar.items() if k.startswith("app_crm_")}, forwarded
    for secret in ("SUPERVISOR", "OTHER-APP"):
        assert secret not in json.dumps(headers), headers
    assert "authorization" not in headers and "proxy-authorization" not in headers and "x-real-ip" not in headers


def test_supervisor_session_cookie_is_scoped_away_from_apps(client):
    create_user("root", superuser=True)
    client.post("/admin/login/", {"username": "root", "password": PASSWORD})
    morsel = client.cookies["sessionid"]
    assert morsel["path"] == "/admin/" and morsel["httponly"]
    assert "csrftoken" not in client.cookies  # CSRF tokens live in the session


# --- Oversized bodies ---------------------------------------------------------------------------


def test_oversized_bodies_are_refused_before_being_read(proxied, settings):
    _app, seen = proxied
    root = create_user("root", superuser=True)
    api = _api(root)
    big = json.dumps({"name": "big", "environments": ["env_a"], "description": "x" * (MAX_BODY_BYTES + 1)})
    response = api.post("/api/v1/apps", big, content_type="application/json")
    assert response.status_code == 413 and "larger than" in response.json()["error"]
    # A declared length beyond the limit is refused without reading (nor waiting for) the body.
    limit = settings.APP_CONFIG.proxy_max_upload_bytes
    declared = {"CONTENT_LENGTH": str(limit + 1)}
    response = api.post("/api/v1/apps/crm/start", "{}", content_type="application/json", **declared)
    assert response.status_code == 413
    response = Client().post("/apps/crm/admin/upload/", "x", content_type="text/plain", **declared)
    assert response.status_code == 413 and seen == []
    response = Client().post("/apps/crm/admin/upload/", "x", content_type="text/plain", CONTENT_LENGTH="-5")
    assert response.status_code == 400 and seen == []
    response = Client().post(
        "/admin/login/",
        f"username=root&password={PASSWORD}",
        content_type="application/x-www-form-urlencoded",
        **declared,
    )
    assert response.status_code == 400
    assert not _operations_audited().exists()


# --- CSRF and permissions on admin operations ------------------------------------------------------


def _csrf_token(html: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


def test_admin_operations_without_a_csrf_token_are_refused(envs):
    create_user("root", superuser=True)
    app = actions.create_application(name="shop", environments=envs)
    browser = Client(enforce_csrf_checks=True)
    assert browser.post("/admin/login/", {"username": "root", "password": PASSWORD}).status_code == 403
    login_page = browser.get("/admin/login/").content.decode()
    token = _csrf_token(login_page)
    response = browser.post("/admin/login/", {"username": "root", "password": PASSWORD, "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    operation = f"/admin/apps_registry/application/{app.pk}/operation/start/"
    changelist = "/admin/apps_registry/application/"
    bulk = {"action": "start_applications", "_selected_action": [app.pk], "confirm": "yes"}
    # A forged cross-site form: no token, or a token from another session.
    other = Client(enforce_csrf_checks=True)
    foreign_token = _csrf_token(other.get("/admin/login/").content.decode())
    for data in ({"confirm": "yes"}, {"confirm": "yes", "csrfmiddlewaretoken": foreign_token}):
        assert browser.post(operation, data).status_code == 403
        assert (
            browser.post(changelist, {**bulk, **{k: v for k, v in data.items() if k != "confirm"}}).status_code == 403
        )
    assert AppEnvironment.objects.filter(application=app).exclude(status=AppStatus.STOPPED).count() == 0
    assert not AuditEntry.objects.filter(action="start").exists()
    # The session cookie alone does not authenticate the API (which is exempt from CSRF).
    assert browser.post("/api/v1/apps/shop/start").status_code == 401
    assert not AuditEntry.objects.filter(action="start").exists()
    # The control: the same request with the page's own token goes through.
    token = _csrf_token(browser.get(operation).content.decode())
    response = browser.post(operation, {"confirm": "yes", "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert AuditEntry.objects.filter(action="start", app_name="shop", user__username="root").count() == 1


@pytest.mark.parametrize("perms", [(), ("view_application",), ("view_application", "change_application")])
def test_staff_without_operation_permissions_cannot_start_or_stop(envs, perms):
    app = actions.create_application(name="shop", environments=envs)
    user = create_user("clerk", perms)
    browser = Client()
    browser.force_login(user)
    for operation in ("start", "stop", "restart", "remove"):
        url = f"/admin/apps_registry/application/{app.pk}/operation/{operation}/"
        assert browser.get(url).status_code == 403
        assert browser.post(url, {"confirm": "yes"}).status_code == 403
        bulk = {"action": f"{operation}_applications", "_selected_action": [app.pk], "confirm": "yes"}
        response = browser.post("/admin/apps_registry/application/", bulk)
        assert response.status_code in (200, 302, 403)
    api = _api(user)
    for operation in ("start", "stop", "restart"):
        assert api.post(f"/api/v1/apps/shop/{operation}").status_code == 403
    assert api.delete("/api/v1/apps/shop").status_code == 403
    assert api.post(
        "/api/v1/apps", json.dumps({"name": "new", "environments": ["env_a"]}), content_type="application/json"
    ).status_code in (403,)
    assert list(_operations_audited().values_list("action", flat=True)) == []
    assert set(AppEnvironment.objects.values_list("status", flat=True)) == {AppStatus.STOPPED}
    assert Application.objects.get(pk=app.pk).generation == 0
