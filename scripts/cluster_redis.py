"""The local cluster's Redis security: a generated password per role (kept 0600 under
``storage/cluster/redis``, never printed), the aclfile of apps_registry/control/redis_acl.py
(the same users as compose and Kubernetes), and the role's URL carrying its credentials."""

from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # redis_acl is plain Python: no Django needed to import it
    sys.path.insert(0, str(ROOT))

from apps_registry.control import redis_acl  # noqa: E402

ROLES = ("supervisor", "env_a", "env_b")


class ClusterRedis:
    def __init__(self, directory: Path, port: int, prefix: str) -> None:
        self.dir = directory
        self.port = port
        self.prefix = prefix
        self.passwords_file = directory / "passwords.json"
        self.aclfile = directory / "users.acl"

    def passwords(self) -> dict[str, str]:
        """One password per role, generated on the first run and kept (0600) so that an
        operator's redis-cli session (docs/operations.md) works across runs."""
        known: dict[str, str] = {}
        if self.passwords_file.exists():
            known = json.loads(self.passwords_file.read_text())
        missing = [role for role in ROLES if not known.get(role)]
        if missing:
            known.update({role: secrets.token_urlsafe(24) for role in missing})
            self.passwords_file.write_text(json.dumps(known, indent=1))
        self.passwords_file.chmod(0o600)
        return known

    def username(self, role: str) -> str:
        return redis_acl.SUPERVISOR_USER if role == "supervisor" else redis_acl.worker_username(role)

    def url(self, role: str) -> str:
        return f"redis://{self.username(role)}:{self.passwords()[role]}@127.0.0.1:{self.port}/0"

    def write_aclfile(self, binary: str) -> None:
        passwords = self.passwords()
        selectors = redis_acl.server_supports_selectors(server_version(binary))
        users = [
            redis_acl.supervisor_user(self.prefix, passwords["supervisor"]),
            *(
                redis_acl.worker_user(self.prefix, env, passwords[env], selectors=selectors)
                for env in ("env_a", "env_b")
            ),
        ]
        self.aclfile.write_text(redis_acl.aclfile(users))
        self.aclfile.chmod(0o600)

    def pong(self) -> bool:
        """PING as the supervisor's user (the default user is off)."""
        auth = _resp("AUTH", self.username("supervisor"), self.passwords()["supervisor"]) + _resp("PING")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(auth)
                reply = b""
                while reply.count(b"\r\n") < 2:  # the AUTH reply, then the PING reply
                    chunk = sock.recv(64)
                    if not chunk:
                        break
                    reply += chunk
                return reply == b"+OK\r\n+PONG\r\n"
        except OSError:
            return False


def _resp(*parts: str) -> bytes:
    out = f"*{len(parts)}\r\n".encode()
    for part in parts:
        data = part.encode()
        out += b"$%d\r\n%s\r\n" % (len(data), data)
    return out


def server_version(binary: str) -> str:
    """``redis-server --version`` says ``Redis server v=7.0.15 …``."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "0"
    match = re.search(r"v=(\d+\.\d+)", out)
    return match.group(1) if match else "0"
