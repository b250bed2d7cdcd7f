"""Host an app in this environment directly (no agent, no supervisor): start, stop or remove it.

python manage.py host_app crm --modules contacts,tasks --admin-user boss --admin-password s3cret
python manage.py host_app crm --stop
python manage.py host_app crm --remove [--drop-data]
"""

from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand, CommandError

from apps_registry.names import is_valid_name
from worker_agent.hosting import local_state, runtime


class Command(BaseCommand):
    help = "Start, stop or remove a hosted app in this environment (what the agent does on a command)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--modules", default="", help="comma-separated business modules: contacts,tasks")
        parser.add_argument("--admin-user", default="", help="first admin user, created on first initialisation")
        parser.add_argument("--admin-password", default="")
        parser.add_argument("--database", default="", help="explicit database name instead of the default")
        parser.add_argument("--generation", type=int, default=None)
        action = parser.add_mutually_exclusive_group()
        action.add_argument("--stop", action="store_true")
        action.add_argument("--remove", action="store_true")
        parser.add_argument("--drop-data", action="store_true", help="with --remove: delete the app's database")

    def handle(self, *args, **opts):
        name = opts["name"]
        if not is_valid_name(name):
            raise CommandError(f"invalid app name {name!r}")
        if opts["drop_data"] and not opts["remove"]:
            raise CommandError("--drop-data only goes with --remove")
        try:
            if opts["stop"]:
                runtime.stop_app(name)
            elif opts["remove"]:
                runtime.remove_app(name, drop_data=opts["drop_data"])
            else:
                runtime.start_app(self._spec(name, opts))
        except runtime.AppStartError as error:
            raise CommandError(str(error)) from None
        status = local_state.app_status(name) or "not hosted here"
        self.stdout.write(f"{name}: {status}")

    def _spec(self, name: str, opts: dict) -> dict:
        options: dict = {"modules": [m.strip() for m in opts["modules"].split(",") if m.strip()]}
        if opts["admin_user"]:
            if not opts["admin_password"]:
                raise CommandError("--admin-user needs --admin-password")
            options["initial_admin"] = {
                "username": opts["admin_user"],
                "password_hash": make_password(opts["admin_password"]),
            }
        if opts["database"]:
            options["database"] = {"name": opts["database"]}
        previous = local_state.app_entry(name) or {}
        generation = opts["generation"]
        if generation is None:
            generation = int(previous.get("generation") or 0) + 1
        return {"name": name, "display_name": name, "options": options, "generation": generation, "environments": {}}
