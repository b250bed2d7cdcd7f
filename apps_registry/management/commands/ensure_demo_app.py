"""Create the demo app on the local cluster's environments and start it (idempotent).

Used by ``make run``: waits for the environments to register, creates ``demo`` on all of
them if it does not exist, and asks for a start where it is not already running or on its
way. Everything goes through ``apps_registry.registry.actions`` so the audit trail records it.

The demo's first admin is a user of its own (``--admin-username``, default ``demo_admin``), with
a generated password printed once, when the app is created: the app's spec carries that user's
password hash through Redis to the workers, so it must never be a supervisor user's.
"""

import os
import secrets
import time

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from apps_registry.control import ingest, redis_client
from apps_registry.models import AppEnvironment, Application, AppStatus, Environment
from apps_registry.names import clean_admin_username, validate_app_name
from apps_registry.registry import actions
from supervisor_site import catalogue


def _ingest() -> None:
    """Apply pending worker events (registrations, statuses) when Redis carries them."""
    if redis_client.configured():
        ingest.ingest()


class Command(BaseCommand):
    help = "Create the demo app on the given environments and start it there (idempotent)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--name", default="demo")
        parser.add_argument("--environments", default="env_a,env_b")
        parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for registration and start")
        parser.add_argument(
            "--admin-username", default="demo_admin", help="the demo app's own first admin (not a supervisor user)"
        )

    def handle(self, *args, name: str, environments: str, wait: float, admin_username: str, **options) -> None:
        validate_app_name(name)
        try:
            app_admin = clean_admin_username(admin_username)
        except ValidationError as error:
            raise CommandError(f"--admin-username: {error.messages[0]}") from None
        wanted = [e.strip() for e in environments.split(",") if e.strip()]
        deadline = time.monotonic() + wait
        envs = self._wait_for_environments(wanted, deadline)
        user = get_user_model().objects.filter(username=os.environ.get("ADMIN_USERNAME") or "admin").first()

        app = Application.objects.filter(name=name).first()
        if app is None:
            password = secrets.token_urlsafe(12)
            options = {
                "modules": sorted(catalogue.labels()),
                "start_mode": "manual",
                "initial_admin": {"username": app_admin, "password_hash": make_password(password)},
            }
            app = actions.create_application(
                name=name, environments=envs, user=user, display_name="Demo", options=options, via="cli"
            )
            self.stdout.write(f"created app {name} on {', '.join(wanted)}")
            self.stdout.write(
                f"first admin of app {name}: {app_admin} / {password} (its own user; shown only this once)"
            )
        else:
            placed = set(app.placements.values_list("environment__name", flat=True))
            if not set(wanted) <= placed:
                actions.set_application_environments(
                    app, [e for e in Environment.objects.filter(name__in=sorted(placed | set(wanted)))], user, via="cli"
                )

        _ingest()
        idle = list(
            AppEnvironment.objects.filter(application=app, environment__name__in=wanted)
            .exclude(status__in=actions.ACTIVE)
            .values_list("environment__name", flat=True)
        )
        if idle:
            actions.request_start(app, user, environments=sorted(idle), via="cli")
            self.stdout.write(f"start of {name} requested on {', '.join(sorted(idle))}")
        self._wait_running(app, wanted, deadline)

    def _wait_for_environments(self, wanted: list[str], deadline: float) -> list[Environment]:
        while True:
            _ingest()
            envs = list(Environment.objects.filter(name__in=wanted))
            if len(envs) == len(wanted):
                return envs
            if time.monotonic() > deadline:
                missing = sorted(set(wanted) - {e.name for e in envs})
                raise CommandError(f"environments not registered in time: {', '.join(missing)} (is run_worker up?)")
            time.sleep(0.3)

    def _wait_running(self, app: Application, wanted: list[str], deadline: float) -> None:
        while True:
            _ingest()
            rows = dict(
                AppEnvironment.objects.filter(application=app, environment__name__in=wanted).values_list(
                    "environment__name", "status"
                )
            )
            errors = AppEnvironment.objects.filter(application=app, status=AppStatus.ERROR).values_list(
                "environment__name", "error"
            )
            if errors:
                raise CommandError("; ".join(f"{env}: {error}" for env, error in errors))
            if rows and all(status == AppStatus.RUNNING for status in rows.values()):
                self.stdout.write(f"app {app.name} running on {', '.join(sorted(rows))}")
                return
            if time.monotonic() > deadline:
                states = ", ".join(f"{env}={status}" for env, status in sorted(rows.items()))
                raise CommandError(f"app {app.name} not running in time ({states})")
            time.sleep(0.3)
