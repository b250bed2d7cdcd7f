"""Configuration: the seed document's variable sets start, every bad one stops start-up with
one line naming the variable. ``manage.py check`` runs as a real subprocess for the
documented combinations; ``config.load`` is tested directly for the many small ones."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from supervisor_site.config import ConfigError, load
from tests.support import services
from tests.support.processes import ROOT, manage

CONFIG_SOURCE = (ROOT / "supervisor_site" / "config.py").read_text()
# Every variable config.py reads: read.raw("X"), read.url("X", ...), environ.get("X"),
# helper(read, "X") ...: the first argument of a call, spelt like an environment variable.
VARIABLES = sorted(set(re.findall(r'\(\s*(?:read,\s*)?"([A-Z][A-Z0-9_]+)"', CONFIG_SOURCE)))

REDIS = services.redis_url()
SUPERVISOR = {  # the seed's supervisor set, as the document spells it
    "APP_MODE": "supervisor",
    "APP_DISCOVERY_ADAPTER": "remote",
    "APP_PROCESS_ADAPTER": "remote",
    "APP_SUPERVISOR_REDIS_URL": REDIS,
    "APP_COMMAND_ADPATER": "redis",
    "APP_COMMAND_REDIS_URL": REDIS,
}
WORKER = {
    "APP_MODE": "worker",
    "APP_DISCOVERY_ADAPTER": "remote",
    "APP_PROCESS_ADAPTER": "local",
    "APP_SUPERVISOR_REDIS_URL": REDIS,
    "APP_COMMAND_ADPATER": "redis",
    "APP_COMMAND_REDIS_URL": REDIS,
    "ENVIRONMENT_NAME": "env_a",
    "ENVIRONMENT_URL": "http://localhost:15000",
    "ENVIRONMENT_PROXY_URL": "http://worker_a",
}
COMMON = {"SECRET_KEY": "not-a-real-secret-for-checks", "TZ": "Europe/Madrid"}
# The compose example's database variables (check does not connect to the database).
COMPOSE_DB = {
    "DB_DIALECT": "postgres",
    "DB_HOST": "postgres",
    "DB_PORT": "5432",
    "DB_DATABASE": "app_supervisor",
    "DB_USER": "app",
    "DB_PASSWORD": "secret",
}


def respelt(variables: dict[str, str]) -> dict[str, str]:
    """The same set with the compose example's spelling APP_COMMAND_ADAPTER."""
    result = {k: v for k, v in variables.items() if k != "APP_COMMAND_ADPATER"}
    result["APP_COMMAND_ADAPTER"] = variables["APP_COMMAND_ADPATER"]
    return result


def without(variables: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in variables.items() if k not in names}


VALID = {
    "supervisor_adpater": {**SUPERVISOR, **COMMON},
    "supervisor_adapter": {**respelt(SUPERVISOR), **COMMON},
    "worker_adpater": {**WORKER, **COMMON, **COMPOSE_DB},
    "worker_adapter": {**respelt(WORKER), **COMMON},
    "supervisor_both_spellings_equal": {**SUPERVISOR, "APP_COMMAND_ADAPTER": "redis", **COMMON},
    "standalone_defaults": {"DEBUG": "true"},
}

# (variables, the variable the one-line error must name)
INVALID = {
    "worker_without_environment_name": ({**without(WORKER, "ENVIRONMENT_NAME"), **COMMON}, "ENVIRONMENT_NAME"),
    "remote_without_redis_url": (
        {**without(SUPERVISOR, "APP_SUPERVISOR_REDIS_URL", "APP_COMMAND_REDIS_URL"), **COMMON},
        "APP_SUPERVISOR_REDIS_URL",
    ),
    "unknown_discovery_adapter": ({**SUPERVISOR, "APP_DISCOVERY_ADAPTER": "etcd", **COMMON}, "APP_DISCOVERY_ADAPTER"),
    "unknown_command_adapter": ({**SUPERVISOR, "APP_COMMAND_ADPATER": "kafka", **COMMON}, "APP_COMMAND_ADPATER"),
    "unknown_mode": ({**SUPERVISOR, "APP_MODE": "cluster", **COMMON}, "APP_MODE"),
    "malformed_redis_url": (
        {**SUPERVISOR, "APP_SUPERVISOR_REDIS_URL": "redis//nohost", **COMMON},
        "APP_SUPERVISOR_REDIS_URL",
    ),
    "malformed_environment_url": ({**WORKER, "ENVIRONMENT_URL": "localhost:15000", **COMMON}, "ENVIRONMENT_URL"),
    "environment_url_with_a_path": (
        {**WORKER, "ENVIRONMENT_URL": "http://worker-a:15000/metrics", **COMMON},
        "ENVIRONMENT_URL",
    ),
    "environment_url_with_a_query": (
        {**WORKER, "ENVIRONMENT_URL": "http://worker-a:15000/?x=/metrics", **COMMON},
        "ENVIRONMENT_URL",
    ),
    "proxy_url_with_user_info": (
        {**WORKER, "ENVIRONMENT_PROXY_URL": "http://me:pw@worker-a:15000", **COMMON},
        "ENVIRONMENT_PROXY_URL",
    ),
    "proxy_url_with_a_fragment": (
        {**WORKER, "ENVIRONMENT_PROXY_URL": "http://worker-a:15000#/metrics", **COMMON},
        "ENVIRONMENT_PROXY_URL",
    ),
    "non_numeric_db_port": ({**WORKER, **COMMON, **COMPOSE_DB, "DB_PORT": "5432a"}, "DB_PORT"),
    "spellings_differ": ({**SUPERVISOR, "APP_COMMAND_ADAPTER": "rabbitmq", **COMMON}, "APP_COMMAND_ADAPTER"),
    "no_secret_key_without_debug": ({**without(SUPERVISOR, "SECRET_KEY"), "TZ": "UTC"}, "SECRET_KEY"),
    "bad_time_zone": ({**SUPERVISOR, **COMMON, "TZ": "Mars/Olympus"}, "TZ"),
}


def check_environ(variables: dict[str, str], storage: Path) -> dict[str, str]:
    """A clean environment: every variable config.py knows blanked (blank means default),
    then the case's own values. The test process's own settings must not leak in."""
    environ = {name: "" for name in VARIABLES}
    environ.update(DJANGO_SETTINGS_MODULE="supervisor_site.settings", APP_STORAGE_DIR=str(storage))
    if variables.get("DB_DIALECT") != "postgres":
        environ["DB_DIALECT"] = "sqlite"
    environ.update(variables)
    return environ


@pytest.fixture(scope="module")
def check_results(tmp_path_factory) -> dict:
    """Run every ``manage.py check`` once, four at a time."""
    cases = {**VALID, **{k: v for k, (v, _) in INVALID.items()}}

    base = tmp_path_factory.mktemp("check")

    def run(item):
        name, variables = item
        return name, manage(["check"], check_environ(variables, base / name), timeout=60)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(run, cases.items()))


@pytest.mark.parametrize("case", sorted(VALID))
def test_documented_variable_sets_pass_check(check_results, case):
    result = check_results[case]
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("case", sorted(INVALID))
def test_bad_configuration_stops_with_one_line(check_results, case):
    result = check_results[case]
    variable = INVALID[case][1]
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("configuration error: ")
    assert variable in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_every_variable_is_documented():
    documented = (ROOT / "docs" / "configuration.md").read_text()
    assert len(VARIABLES) > 30
    missing = [name for name in VARIABLES if f"`{name}`" not in documented]
    assert not missing, f"not in docs/configuration.md: {missing}"


def test_env_example_is_a_working_configuration(tmp_path):
    lines = (ROOT / ".env.example").read_text().splitlines()
    pairs = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    assert set(pairs) <= set(VARIABLES), f"unknown variables: {set(pairs) - set(VARIABLES)}"
    # The misspelt alias is shown commented out: setting both spellings differently is an error.
    assert set(VARIABLES) - set(pairs) == {"APP_COMMAND_ADPATER"}, "every variable appears in .env.example"
    config = load({**pairs, "SECRET_KEY": "filled-in-by-the-operator"}, tmp_path)
    assert config.mode == "standalone"


# --- config.load, directly ------------------------------------------------------------------------


def cfg(tmp_path, **variables):
    return load({"SECRET_KEY": "k", **variables}, tmp_path)


def test_standalone_defaults(tmp_path):
    config = load({"DEBUG": "1"}, tmp_path)
    assert (config.mode, config.discovery_adapter, config.process_adapter, config.command_adapter) == (
        "standalone",
        "local",
        "local",
        "",
    )
    assert config.database.dialect == "sqlite"
    assert config.database.sqlite_path == tmp_path / "storage" / "db.sqlite3"
    assert config.environment_name == "local"
    assert config.redis_prefix == "appsup"
    assert config.time_zone == "UTC"
    assert config.secret_key and config.debug
    assert not config.uses_redis


def test_supervisor_defaults_follow_the_document(tmp_path):
    config = cfg(tmp_path, APP_MODE="supervisor", APP_SUPERVISOR_REDIS_URL=REDIS)
    assert (config.discovery_adapter, config.process_adapter, config.command_adapter) == ("remote", "remote", "redis")
    assert config.command_redis_url == REDIS, "one Redis serves both roles when only one is given"


def test_worker_defaults_follow_the_document(tmp_path):
    config = cfg(
        tmp_path,
        APP_MODE="worker",
        APP_SUPERVISOR_REDIS_URL=REDIS,
        APP_COMMAND_REDIS_URL="redis://127.0.0.1:6380/2",
        ENVIRONMENT_NAME="env_b",
        ENVIRONMENT_URL="http://localhost:16000/",
    )
    assert (config.discovery_adapter, config.process_adapter, config.command_adapter) == ("remote", "local", "redis")
    assert config.command_redis_url == "redis://127.0.0.1:6380/2"
    assert config.environment_url == "http://localhost:16000"  # trailing slash dropped
    assert config.environment_proxy_url == ""


@pytest.mark.parametrize("spelling", ["APP_COMMAND_ADAPTER", "APP_COMMAND_ADPATER"])
def test_either_spelling(tmp_path, spelling):
    config = cfg(tmp_path, APP_MODE="supervisor", APP_SUPERVISOR_REDIS_URL=REDIS, **{spelling: "redis"})
    assert config.command_adapter == "redis"


def test_postgres_database(tmp_path):
    config = cfg(tmp_path, **COMPOSE_DB)
    db = config.database
    assert (db.dialect, db.host, db.port, db.name, db.user, db.password) == (
        "postgres",
        "postgres",
        5432,
        "app_supervisor",
        "app",
        "secret",
    )


def test_lists_and_numbers(tmp_path):
    config = cfg(
        tmp_path,
        ALLOWED_HOSTS=" a.example , b.example,",
        APP_LEASE_INTERVAL="0.5",
        APP_OFFLINE_AFTER="2",
        APP_COMMAND_CONCURRENCY="8",
        DEBUG="off",
    )
    assert config.allowed_hosts == ["a.example", "b.example"]
    assert (config.lease_interval, config.offline_after, config.command_concurrency) == (0.5, 2.0, 8)
    assert config.failover_grace == 60.0  # the default, already over twice the offline threshold
    assert cfg(tmp_path, APP_OFFLINE_AFTER="40").failover_grace == 80.0
    assert config.debug is False


@pytest.mark.parametrize(
    ("variables", "variable"),
    [
        ({"APP_MODE": "Supervisor"}, "APP_MODE"),
        ({"APP_PROCESS_ADAPTER": "docker"}, "APP_PROCESS_ADAPTER"),
        (
            {"APP_MODE": "supervisor", "APP_PROCESS_ADAPTER": "local", "APP_SUPERVISOR_REDIS_URL": REDIS},
            "APP_PROCESS_ADAPTER",
        ),
        ({"APP_MODE": "worker", "APP_PROCESS_ADAPTER": "remote"}, "APP_PROCESS_ADAPTER"),
        ({"APP_PROCESS_ADAPTER": "remote"}, "APP_COMMAND_ADAPTER"),
        ({"APP_DISCOVERY_ADAPTER": "remote"}, "APP_SUPERVISOR_REDIS_URL"),
        ({"APP_COMMAND_ADAPTER": "redis"}, "APP_COMMAND_REDIS_URL"),
        ({"APP_COMMAND_ADAPTER": "redis", "APP_COMMAND_ADPATER": "nats"}, "APP_COMMAND_ADAPTER"),
        ({"APP_SUPERVISOR_REDIS_URL": "redis://host:port/0"}, "APP_SUPERVISOR_REDIS_URL"),
        ({"APP_COMMAND_REDIS_URL": "http://host:6379"}, "APP_COMMAND_REDIS_URL"),
        ({"ENVIRONMENT_NAME": "Env-A"}, "ENVIRONMENT_NAME"),
        ({"ENVIRONMENT_PROXY_URL": "ftp://worker"}, "ENVIRONMENT_PROXY_URL"),
        ({"APP_REDIS_PREFIX": "has space"}, "APP_REDIS_PREFIX"),
        ({"APP_DB_PREFIX": "Bad-"}, "APP_DB_PREFIX"),
        ({"DB_DIALECT": "mysql"}, "DB_DIALECT"),
        ({"DB_DIALECT": "postgres"}, "DB_DATABASE"),
        ({"DB_PORT": "0"}, "DB_PORT"),
        ({"DB_PORT": "70000"}, "DB_PORT"),
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"TZ": "Nowhere/City"}, "TZ"),
        ({"APP_LEASE_INTERVAL": "soon"}, "APP_LEASE_INTERVAL"),
        ({"APP_LEASE_INTERVAL": "5", "APP_OFFLINE_AFTER": "10"}, "APP_OFFLINE_AFTER"),
        ({"APP_OFFLINE_AFTER": "12", "APP_FAILOVER_GRACE": "20"}, "APP_FAILOVER_GRACE"),
        ({"APP_COMMAND_CONCURRENCY": "0"}, "APP_COMMAND_CONCURRENCY"),
        ({"PROXY_MAX_UPLOAD_BYTES": "1e6"}, "PROXY_MAX_UPLOAD_BYTES"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"TRUSTED_PROXY_IPS": "10.0.0.0/33"}, "TRUSTED_PROXY_IPS"),
        ({"METRICS_ALLOWED_IPS": "localhost"}, "METRICS_ALLOWED_IPS"),
        ({"APP_EVENTS_GROUP": "Supervisor Group"}, "APP_EVENTS_GROUP"),
        ({"PROXY_ROUTE_CACHE_SECONDS": "-1"}, "PROXY_ROUTE_CACHE_SECONDS"),
        ({"ENVIRONMENT_KEY": "not base64!"}, "ENVIRONMENT_KEY"),
        ({"ENVIRONMENT_KEY": "c2hvcnQ="}, "ENVIRONMENT_KEY"),  # 5 bytes, not a 32-byte seed
        ({"SUPERVISOR_KEY": "c2hvcnQ="}, "SUPERVISOR_KEY"),
        ({"SUPERVISOR_PUBLIC_KEY": "%%%"}, "SUPERVISOR_PUBLIC_KEY"),
        ({"ENVIRONMENT_APPROVAL": "perhaps"}, "ENVIRONMENT_APPROVAL"),
    ],
)
def test_bad_values_name_their_variable(tmp_path, variables, variable):
    with pytest.raises(ConfigError) as raised:
        cfg(tmp_path, **variables)
    message = str(raised.value)
    assert message.startswith(variable), message
    assert "\n" not in message


def test_secret_key_required_outside_debug(tmp_path):
    with pytest.raises(ConfigError, match="^SECRET_KEY"):
        load({}, tmp_path)
    assert load({"DEBUG": "true"}, tmp_path).secret_key


@pytest.mark.parametrize(
    "url",
    ["redis://worker-env_a:s3cret-pass-word@redis:6379x/0", "http://supervisor:s3cret-pass-word@redis:6379/0"],
)
def test_a_bad_redis_url_is_named_without_its_password(tmp_path, url):
    with pytest.raises(ConfigError) as raised:
        cfg(tmp_path, **{**SUPERVISOR, "APP_SUPERVISOR_REDIS_URL": url})
    message = str(raised.value)
    assert message.startswith("APP_SUPERVISOR_REDIS_URL") and "s3cret-pass-word" not in message, message
    assert ":***@redis" in message


def test_masked_urls():
    from supervisor_site.secret_urls import masked

    assert masked("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"
    assert masked("redis://:pw@h/0") == "redis://:***@h/0"
    assert masked("redis://h:1/0") == "redis://h:1/0"
    assert masked("redis://u:p@w@[bad/0") == "redis://u:***@[bad/0"
