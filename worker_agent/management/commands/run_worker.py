"""``manage.py run_worker``: the worker's agent (registration, lease, commands, reconciliation)."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Run this environment's agent: register, beat the lease, carry out commands, reconcile."

    def handle(self, *args, **options) -> None:
        config = settings.APP_CONFIG
        if config.mode != "worker":
            raise CommandError(f"run_worker needs APP_MODE=worker (this process has APP_MODE={config.mode})")
        from worker_agent.agent.main import Agent

        code = Agent().run()
        if code:
            raise SystemExit(code)
