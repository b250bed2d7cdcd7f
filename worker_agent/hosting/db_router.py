"""Keeps each database to its own tables.

The supervisor's database (alias ``default``) holds the registry; a hosted app's database
(alias ``app:<name>``) holds Django's auth, sessions and admin log for that app plus the
business modules that app enables. Neither ever gets the other's tables.
"""

from contextvars import ContextVar

from supervisor_site import catalogue

APP_ALIAS_PREFIX = "app:"
# Tables an app database carries besides its business modules.
APP_SHARED_LABELS = frozenset({"auth", "contenttypes", "sessions", "admin"})
# Tables of the instance, never of an app, even during a hosted request: standalone's login
# throttle counts (supervisor_site.login_throttle) for the apps it hosts live in ``default``.
INSTANCE_LABELS = frozenset({"axes"})

# The database alias of the hosted app serving the current request, if any.
current_app_alias: ContextVar[str | None] = ContextVar("current_app_alias", default=None)

# alias -> business modules that app enables; set when its alias is registered.
_enabled_modules: dict[str, frozenset[str]] = {}


def is_app_alias(alias: str) -> bool:
    return alias.startswith(APP_ALIAS_PREFIX)


def alias_for(name: str) -> str:
    return f"{APP_ALIAS_PREFIX}{name}"


def set_enabled_modules(alias: str, modules: frozenset[str]) -> None:
    _enabled_modules[alias] = frozenset(modules) & catalogue.labels()


def enabled_modules(alias: str) -> frozenset[str]:
    return _enabled_modules.get(alias, frozenset())


class HostedAppRouter:
    def db_for_read(self, model, **hints):
        return None if model._meta.app_label in INSTANCE_LABELS else current_app_alias.get()

    def db_for_write(self, model, **hints):
        return None if model._meta.app_label in INSTANCE_LABELS else current_app_alias.get()

    def allow_relation(self, obj1, obj2, **hints):
        return obj1._state.db == obj2._state.db

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        if is_app_alias(db):
            return app_label in APP_SHARED_LABELS or app_label in enabled_modules(db)
        return app_label not in catalogue.labels()
