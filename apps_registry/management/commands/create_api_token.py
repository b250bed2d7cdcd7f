"""Issue an API token for a user and print it, alone on one line (only its hash is stored).
The audit trail records the issue: ``--by`` names the operator asking, else the entry says
which system account ran the command."""

import getpass

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from apps_registry.registry import actions


class Command(BaseCommand):
    help = "Create a bearer token for /api/v1/ for USERNAME and print it (shown only this once)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="a label to recognise the token by in the admin")
        parser.add_argument("--by", default="", help="the supervisor user asking for it, recorded in the audit trail")

    def handle(self, *args, username: str, name: str, by: str, **options) -> None:
        users = get_user_model().objects
        user = users.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        if not user.is_active:
            raise CommandError(f"user {username!r} is inactive")
        actor = None
        if by:
            actor = users.filter(username=by, is_active=True).first()
            if actor is None:
                raise CommandError(f"--by: no active user named {by!r}")
        try:
            account = getpass.getuser()
        except (KeyError, OSError):  # no name for this uid (containers)
            account = "unknown"
        _token, raw = actions.issue_api_token(
            user, name=name, actor=actor, via="cli", note=f"manage.py create_api_token run as {account}"
        )
        self.stdout.write(raw)
