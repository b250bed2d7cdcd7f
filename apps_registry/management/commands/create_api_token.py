"""Issue an API token for a user and print it, alone on one line (only its hash is stored)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from apps_registry.models import ApiToken


class Command(BaseCommand):
    help = "Create a bearer token for /api/v1/ for USERNAME and print it (shown only this once)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="a label to recognise the token by in the admin")

    def handle(self, *args, username: str, name: str, **options) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        if not user.is_active:
            raise CommandError(f"user {username!r} is inactive")
        _token, raw = ApiToken.issue(user, name=name[:100])
        self.stdout.write(raw)
