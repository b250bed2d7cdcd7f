"""Redis ACL users per role: what the supervisor and each worker environment may do in Redis.

Pure text generation (no Django, no connection), so that the local cluster
(scripts/cluster.py) and ``manage.py redis_acl`` (compose, Kubernetes, operators) build the
same rules. The key patterns follow docs/protocol.md's key tables; tests check them against
``keys.py``'s builders, so a key moved there cannot silently fall outside its user's rights.

On Redis 7 each worker user is made of *selectors* (``(~pattern +command …)``): a command is
allowed only together with the keys it is meant for, e.g. ``XADD`` on the events stream but
not on a command stream. Redis 6 has no selectors: there the worker gets the union of the
commands and the union of the keys (coarser, documented in docs/security.md).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

SUPERVISOR_USER = "supervisor"
# ``-`` never occurs in an environment name (apps_registry.names), so no environment's user
# can collide with the supervisor's or with another role's.
WORKER_USER_PREFIX = "worker-"

_ENV_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,40}$")

# Keyless commands every client needs: the handshake (redis-py ignores a refused CLIENT
# SETINFO, which Redis 7.0 does not know and so cannot be named), SELECT of the URL's database,
# transactions, the server clock, and loading the Lua scripts the roles run (the scripts'
# own calls are checked against the user's key rights one by one).
_CONNECTION = (
    "+ping +echo +hello +auth +select +client|setname +client|id +client|getname "
    "+time +multi +exec +discard +unwatch +script|load +script|exists"
)


@dataclass(frozen=True)
class User:
    name: str
    password: str
    rules: tuple[str, ...]

    def aclfile_line(self) -> str:
        """One line of an aclfile: only the password's SHA-256 is written, never the password."""
        return " ".join(("user", self.name, *self._common(), *self.rules))

    def setuser_command(self) -> list[str]:
        """``ACL SETUSER`` arguments, for a running server (``redis-cli`` or a client)."""
        return ["ACL", "SETUSER", self.name, *self._common(), *self.rules]

    def _common(self) -> tuple[str, ...]:
        digest = hashlib.sha256(self.password.encode()).hexdigest()
        return ("reset", "on", f"#{digest}")


def _check(prefix: str, password: str) -> None:
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"not a key prefix: {prefix!r}")
    # Generated passwords only: a short one is a default someone typed.
    if len(password) < 16 or any(c.isspace() for c in password):
        raise ValueError("a Redis password must be at least 16 characters, without spaces (generate one)")


def supervisor_user(prefix: str, password: str) -> User:
    """Everything under the prefix and RQ's keys (the start queue, its pub/sub), no
    server administration: no CONFIG, ACL changes, FLUSH*, DEBUG, SHUTDOWN, MONITOR."""
    _check(prefix, password)
    rules = (
        f"~{prefix}:*",
        "~rq:*",
        "resetchannels",  # Redis 6 starts a user with every channel
        "&rq:*",
        "+@all",
        "-@admin",
        "-flushall",
        "-flushdb",
        "-keys",
        "-migrate",
        "-restore",
        "+info",  # RQ reads the server's version
    )
    return User(SUPERVISOR_USER, password, rules)


def worker_username(env: str) -> str:
    return f"{WORKER_USER_PREFIX}{env}"


def _worker_grants(prefix: str, env: str) -> list[tuple[str, str]]:
    """(key patterns, commands) pairs of one environment's agent and web processes."""
    p = prefix
    return [
        # Its reports: append only. Every worker appends to the one events stream, so what an
        # entry *says* (which environment) is not something key rights can bound.
        (f"%W~{p}:events", "+xadd"),
        # Its own commands: read, acknowledge, take over its own pending entries.
        (
            f"~{p}:cmd:{env}",
            "+xreadgroup +xack +xautoclaim +xclaim +xgroup|create +xpending +xinfo|stream +xinfo|groups",
        ),
        # The configuration cache: read only. EVAL declares its keys read-write (a script may
        # write), so the Lua read script has a selector of its own; the calls inside a script
        # are checked one by one, and no selector allows a write on the cache.
        (f"%R~{p}:cfg:*", "+get +mget +exists +smembers +sismember +scard +type"),
        (f"~{p}:cfg:*", "+eval +evalsha"),
        # Its own de-duplication results and generations.
        (f"~{p}:done:{env}:*", "+get +set +exists +mget"),
        (f"~{p}:gen:{env}", "+hget +hmget +hgetall +hset +hsetnx +exists"),
        # Its leases: one key per environment and signing key, signed (docs/security.md), stamped
        # with the server's TIME read just before.
        (f"~{p}:lease:{env}:*", "+set +get +del +time"),
        # Its apps' log lines (P:log:<app>:<env>): append only, to its own environment's
        # streams; the supervisor reads them (every key under the prefix).
        (f"%W~{p}:log:*:{env}", "+xadd"),
        # Its apps' figures (P:fig:<app>:<minute>:<env>, P:dbsize:<app>:<env>): add and expire,
        # its own environment's keys only; the supervisor reads them. HINCRBY returns the new
        # value (its key spec says ACCESS), so Redis counts it as a read too: ``~``, not ``%W~``.
        (f"~{p}:fig:*:{env}", "+hincrby +expire"),
        (f"%W~{p}:dbsize:*:{env}", "+hset +expire"),
        # Acknowledgements for the supervisor's blocking wait: push only.
        (f"%W~{p}:ack:*", "+lpush +rpush +expire"),
        # The apps' login throttle (django-axes through Django's Redis cache).
        (
            f"~{p}:login:*",
            "+get +mget +set +setex +psetex +mset +incr +incrby +decr +decrby +del +unlink +exists +expire "
            "+pexpire +persist +ttl +pttl +touch",
        ),
    ]


def worker_user(prefix: str, env: str, password: str, *, selectors: bool = True) -> User:
    """One worker environment's user: see ``_worker_grants``; nothing of RQ, nothing of the
    other environments' command streams, results or generations, no cache writes."""
    _check(prefix, password)
    if not _ENV_RE.match(env):
        raise ValueError(f"not an environment name: {env!r}")
    grants = _worker_grants(prefix, env)
    rules: list[str] = ["resetkeys", "resetchannels", "-@all", *_CONNECTION.split()]
    if selectors:
        rules += [f"({patterns} {commands})" for patterns, commands in grants]
    else:
        # Redis 6: no selectors and no %R/%W: the union of keys (read-write) and commands.
        for patterns, _commands in grants:
            rules.append("~" + patterns.split("~", 1)[1])
        commands = sorted({c for _patterns, cs in grants for c in cs.split()})
        rules += commands
    return User(worker_username(env), password, tuple(rules))


def aclfile(users: list[User]) -> str:
    """A whole aclfile: the roles' users, and the passwordless ``default`` user turned off."""
    # No comment line: redis-server refuses an aclfile holding anything but ``user`` lines.
    lines = [
        "user default off resetkeys resetchannels -@all",
        *(user.aclfile_line() for user in users),
    ]
    return "\n".join(lines) + "\n"


def server_supports_selectors(version: str) -> bool:
    """Selectors and %R/%W key rights came with Redis 7.0."""
    match = re.match(r"(\d+)\.", version)
    return bool(match) and int(match.group(1)) >= 7
