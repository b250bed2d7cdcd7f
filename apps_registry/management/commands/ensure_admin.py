"""Create the first superuser if there is none, and print how to log in.

A generated password is printed this once and kept nowhere (only its hash, in the registry);
one given in ADMIN_PASSWORD is not printed at all: its owner knows it, and logs keep lines."""

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create a superuser (ADMIN_USERNAME / ADMIN_PASSWORD, or generated) unless one exists."

    def handle(self, *args, **options) -> None:
        users = get_user_model().objects
        if users.filter(is_superuser=True).exists():
            self.stdout.write("Admin user exists already (reset it with: manage.py changepassword <user>)")
            return
        username = os.environ.get("ADMIN_USERNAME") or "admin"
        given = os.environ.get("ADMIN_PASSWORD", "")
        password = given or secrets.token_urlsafe(12)
        users.create_superuser(username=username, email="", password=password)
        if given:
            self.stdout.write(f"Admin user created: {username} (password from ADMIN_PASSWORD)")
        else:
            self.stdout.write(f"Admin user created: {username} / {password} (generated; shown only this once)")
