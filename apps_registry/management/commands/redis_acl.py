"""Print (or write) the Redis ACL users of the supervisor and of worker environments."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps_registry.control import redis_acl


def password_variable(role: str) -> str:
    """``supervisor`` -> ``REDIS_PASSWORD_SUPERVISOR``, ``env_a`` -> ``REDIS_PASSWORD_ENV_A``."""
    return "REDIS_PASSWORD_" + re.sub(r"[^A-Za-z0-9]", "_", role).upper()


class Command(BaseCommand):
    help = (
        "Redis ACL users per role: 'supervisor' and one per environment name. Each role's password is read "
        "from REDIS_PASSWORD_<ROLE> (e.g. REDIS_PASSWORD_ENV_A), never from the command line nor defaulted."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("roles", nargs="+", help="supervisor and/or environment names (env_a env_b …)")
        parser.add_argument(
            "--format",
            choices=("aclfile", "setuser"),
            default="aclfile",
            help="an aclfile (redis-server --aclfile) or ACL SETUSER lines for redis-cli (default: aclfile)",
        )
        parser.add_argument(
            "--redis-version",
            default="7",
            help="the server's version: below 7 (no selectors) workers get coarser rights (default: 7)",
        )
        parser.add_argument("--prefix", default="", help="key prefix (default: APP_REDIS_PREFIX)")
        parser.add_argument("--output", default="", help="write to this file instead of stdout")
        parser.add_argument(
            "--mode", default="600", help="octal mode of --output (644 if Redis runs as another user: hashes only)"
        )

    def handle(self, *args, **options) -> None:
        prefix = options["prefix"] or settings.APP_CONFIG.redis_prefix
        selectors = redis_acl.server_supports_selectors(options["redis_version"])
        users = []
        for role in options["roles"]:
            variable = password_variable(role)
            password = os.environ.get(variable, "")
            if not password:
                raise CommandError(f"{variable} is not set: generate one (scripts/make-env.sh) and export it")
            try:
                if role == redis_acl.SUPERVISOR_USER:
                    users.append(redis_acl.supervisor_user(prefix, password))
                else:
                    users.append(redis_acl.worker_user(prefix, role, password, selectors=selectors))
            except ValueError as error:
                raise CommandError(f"{role}: {error}") from None
        if options["format"] == "aclfile":
            text = redis_acl.aclfile(users)
        else:
            text = "".join(shlex.join(user.setuser_command()) + "\n" for user in users)
        if options["output"]:
            path = Path(options["output"])
            path.write_text(text)
            path.chmod(int(options["mode"], 8))
        else:
            self.stdout.write(text, ending="")
