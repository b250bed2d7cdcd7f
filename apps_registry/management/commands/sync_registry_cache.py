"""Rebuild the Redis configuration cache from the registry database."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps_registry.control import keys, redis_client
from apps_registry.control.discovery import RemoteDiscovery


class Command(BaseCommand):
    help = "Rewrite the Redis configuration cache (apps, environments) from the registry database."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--if-missing",
            action="store_true",
            help="only rebuild when the cache's 'built' marker is missing or its epoch is older than the registry's",
        )

    def handle(self, *args, **options) -> None:
        config = settings.APP_CONFIG
        if config.mode == "worker":
            raise CommandError("run this on the supervisor: workers have no registry database")
        if not config.supervisor_redis_url:
            raise CommandError("APP_SUPERVISOR_REDIS_URL is not set: there is no Redis cache to rebuild")
        cache = RemoteDiscovery()
        if options["if_missing"]:
            before = cache.is_built()
            rev = redis_client.get().get(keys.cfg_rev())
            cache.ensure_built(force=True)
            if not before:
                self.stdout.write("cache was missing: rebuilt")
            elif redis_client.get().get(keys.cfg_rev()) != rev:
                self.stdout.write("cache was older than the registry (epoch): rebuilt")
            else:
                self.stdout.write("cache present, left as is")
            return
        cache.rebuild()
        raw = redis_client.get().get(keys.cfg_built())
        self.stdout.write(f"config cache rebuilt: {raw}")
