from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _register_standalone_environment(sender, using: str = "default", **kwargs) -> None:
    """A standalone instance is its own (only) environment: it exists as soon as the registry
    does, so apps can be placed on it without any agent registering it."""
    from django.conf import settings

    if settings.APP_MODE != "standalone" or using != "default":
        return
    from apps_registry.models import Environment
    from apps_registry.registry import actions

    config = settings.APP_CONFIG
    if not Environment.objects.filter(name=config.environment_name).exists():
        actions.register_environment(
            name=config.environment_name,
            url=config.environment_url or "http://127.0.0.1",
            proxy_url=config.environment_proxy_url,
        )


class AppsRegistryConfig(AppConfig):
    name = "apps_registry"
    verbose_name = "App supervisor"

    def ready(self) -> None:
        post_migrate.connect(_register_standalone_environment, sender=self)
