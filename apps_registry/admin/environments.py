"""Environments in the admin: registered by the workers themselves, so view-only apart from
the enable/disable/forget actions. Every change goes through ``apps_registry.registry.actions``.
The list costs a constant number of queries; liveness is one Redis round trip per page."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from apps_registry.admin.site import SupervisorMedia, apply_worker_events, status_badge
from apps_registry.control import liveness
from apps_registry.models import Environment
from apps_registry.registry import actions


@admin.register(Environment)
class EnvironmentAdmin(admin.ModelAdmin):
    list_display = ["name", "version", "url", "proxy_url", "status", "last_heartbeat_age", "running", "enabled"]
    list_filter = ["enabled"]
    search_fields = ["name", "url"]
    actions = ["disable_environments", "enable_environments", "forget_environments"]
    readonly_fields = [
        "name",
        "url",
        "proxy_url",
        "version",
        "host",
        "pid",
        "apps_running",
        "first_seen",
        "last_heartbeat",
        "stopped_at",
        "enabled",
    ]
    Media = SupervisorMedia

    # Workers register themselves: nobody types an environment in.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Environment | None = None) -> bool:
        # The detail page is view-only; "change" is what the enable/disable actions need.
        if obj is not None:
            return False
        return super().has_change_permission(request, obj)

    def get_actions(self, request: HttpRequest) -> dict:
        found = super().get_actions(request)
        found.pop("delete_selected", None)  # forgetting goes through forget_environments
        return found

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        apply_worker_events()
        return super().changelist_view(request, extra_context)

    def get_changelist_instance(self, request: HttpRequest) -> ChangeList:
        changelist = super().get_changelist_instance(request)
        rows = list(changelist.result_list)  # evaluates (and caches) the page's queryset
        statuses = liveness.environment_statuses(rows)
        for env in rows:
            env.liveness = statuses[env.name]
        return changelist

    def _liveness(self, env: Environment) -> tuple[str, object]:
        found = getattr(env, "liveness", None)
        if found is None:
            found = liveness.environment_statuses([env])[env.name]
            env.liveness = found
        return found

    @admin.display(description="status")
    def status(self, env: Environment) -> str:
        return status_badge(self._liveness(env)[0])

    @admin.display(description="last heartbeat", ordering="last_heartbeat")
    def last_heartbeat_age(self, env: Environment) -> str:
        return liveness.describe_age(self._liveness(env)[1])

    @admin.display(description="apps running")
    def running(self, env: Environment) -> str:
        names = list(env.apps_running or [])
        if len(names) > 8:
            return f"{', '.join(names[:8])} … (+{len(names) - 8})"
        return ", ".join(names) or "—"

    def delete_model(self, request: HttpRequest, obj: Environment) -> None:
        actions.forget_environment(obj, request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for env in queryset:
            actions.forget_environment(env, request.user)

    @admin.action(description="Disable selected environments", permissions=["change"])
    def disable_environments(self, request: HttpRequest, queryset: QuerySet) -> None:
        envs = list(queryset)
        for env in envs:
            actions.set_environment_enabled(env, False, request.user)
        self.message_user(request, f"Disabled {len(envs)} environment(s).", messages.SUCCESS)

    @admin.action(description="Enable selected environments", permissions=["change"])
    def enable_environments(self, request: HttpRequest, queryset: QuerySet) -> None:
        envs = list(queryset)
        for env in envs:
            actions.set_environment_enabled(env, True, request.user)
        self.message_user(request, f"Enabled {len(envs)} environment(s).", messages.SUCCESS)

    @admin.action(
        description="Forget selected environments (they register again if they come back)", permissions=["delete"]
    )
    def forget_environments(self, request: HttpRequest, queryset: QuerySet) -> None:
        envs = list(queryset)
        for env in envs:
            actions.forget_environment(env, request.user)
        self.message_user(request, f"Forgot {len(envs)} environment(s).", messages.SUCCESS)
