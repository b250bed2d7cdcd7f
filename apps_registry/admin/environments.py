"""Environments in the admin: registered by the workers themselves, so view-only apart from
the enable/disable/forget actions, each behind a confirmation page that lists the apps placed
there; an online environment is never forgotten. Every change goes through
``apps_registry.registry.actions``.
The list costs a constant number of queries; liveness is one Redis round trip per page."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib import admin, messages
from django.contrib.admin.templatetags.admin_list import _boolean_icon
from django.contrib.admin.views.main import ChangeList
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.defaultfilters import pluralize
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from apps_registry import signing
from apps_registry.admin import environment_figures
from apps_registry.admin.site import SupervisorMedia, apply_worker_events, status_badge
from apps_registry.control import liveness
from apps_registry.control.identity import forget as forget_remembered_key
from apps_registry.control.lifecycle import requests as lifecycle
from apps_registry.models import Environment, EnvironmentStatus
from apps_registry.registry import actions


def _cut(text: str) -> str:
    """Long text cut with an ellipsis by the stylesheet, whole in its title: the status,
    heartbeat, apps and enabled columns stay on screen at 1280 px."""
    return format_html('<span class="appsup-ellipsis" title="{0}">{0}</span>', text)


@admin.register(Environment)
class EnvironmentAdmin(admin.ModelAdmin):
    list_display = [
        "name_shown",
        "version_shown",
        "url_shown",
        "status",
        "last_heartbeat_age",
        "running",
        "enabled_shown",
        "identity_shown",
    ]
    list_display_links = ["name_shown"]
    list_filter = ["enabled", "approved", "draining"]
    search_fields = ["name", "url"]
    actions = [
        "disable_environments",
        "enable_environments",
        "forget_environments",
        "approve_environments",
        "rebind_environments",
        "drain_environments",
        "undrain_environments",
    ]
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
        "draining",
        "approved",
        "key_fingerprint",
        "key_bound_at",
        "refused",
    ]
    exclude = ["public_key", "refused_key", "refused_host", "refused_reason", "refused_at", "refused_count"]
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
        running = environment_figures.running_apps(rows)  # two queries for the page
        for env in rows:
            env.liveness = statuses[env.name]
            env.running_now = running[env.name]
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
        # status.js rewrites it from the status endpoint: the age moves without a reload.
        return environment_figures.heartbeat_text(self._liveness(env)[1])

    @admin.display(description="apps running")
    def running(self, env: Environment) -> str:
        # The workers' current reports (placements), refreshed by status.js; not the heartbeat's list.
        running = getattr(env, "running_now", None)
        if running is None:
            running = environment_figures.running_apps([env])[env.name]
        return _cut(environment_figures.running_text(running, self._liveness(env)[0]))

    @admin.display(description="name", ordering="name")
    def name_shown(self, env: Environment) -> str:
        return _cut(env.name)  # names may have 63 characters

    @admin.display(description="version", ordering="version")
    def version_shown(self, env: Environment) -> str:
        return _cut(env.version)  # whatever the worker reports

    @admin.display(description="enabled", ordering="enabled")
    def enabled_shown(self, env: Environment) -> str:
        # Draining is said here rather than in a column of its own: the list stays inside 1280 px.
        icon = _boolean_icon(env.enabled)
        if env.draining:
            return format_html('{} <span class="appsup-draining" title="takes no new apps">draining</span>', icon)
        return icon

    @admin.display(description="url", ordering="url")
    def url_shown(self, env: Environment) -> str:
        return _cut(env.url)

    @admin.display(description="identity")
    def identity_shown(self, env: Environment) -> str:
        return _cut(self.identity(env))

    def identity(self, env: Environment) -> str:
        """The bound key's fingerprint, whether it waits for approval, and the last refused
        claim on the name (docs/security.md)."""
        parts = [f"key {signing.fingerprint(env.public_key)}" if env.public_key else "no key bound yet"]
        if not env.approved:
            parts.append("pending approval")
        if env.refused_at:
            parts.append(f"refused: {self.refused(env)}")
        return "; ".join(parts)

    @admin.display(description="key")
    def key_fingerprint(self, env: Environment) -> str:
        return signing.fingerprint(env.public_key) if env.public_key else "—"

    @admin.display(description="last refused message")
    def refused(self, env: Environment) -> str:
        if not env.refused_at:
            return "—"
        offered = f"; re-bind would bind key {signing.fingerprint(env.refused_key)}" if env.refused_key else ""
        return (
            f"{env.refused_reason} ({env.refused_count} in all, last {liveness.describe_age(env.refused_at)}){offered}"
        )

    def has_approve_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("apps_registry.approve_environment")

    def has_rebind_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("apps_registry.rebind_environment")

    # --- Disable, enable, forget: each behind a confirmation page listing what it affects -------

    confirmation_template = "admin/apps_registry/environment/confirm_action.html"

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: dict | None = None) -> HttpResponse:
        # The detail page's "Delete" is a forget: same rule, same confirmation, same audit.
        env = self.get_object(request, object_id)
        if env is None or not self.has_delete_permission(request, env):
            return super().delete_view(request, object_id, extra_context)
        response = self._confirm_then_perform(request, "forget", Environment.objects.filter(pk=env.pk))
        return response or HttpResponseRedirect(reverse("admin:apps_registry_environment_changelist"))

    @admin.action(description="Disable selected environments", permissions=["change"])
    def disable_environments(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._confirm_then_perform(request, "disable", queryset)

    @admin.action(description="Enable selected environments", permissions=["change"])
    def enable_environments(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._confirm_then_perform(request, "enable", queryset)

    @admin.action(
        description="Forget selected environments (they register again if they come back)", permissions=["delete"]
    )
    def forget_environments(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._confirm_then_perform(request, "forget", queryset)

    @admin.action(description="Approve selected environments (pending approval)", permissions=["approve"])
    def approve_environments(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._confirm_then_perform(request, "approve", queryset)

    @admin.action(description="Re-bind selected environments to the key last refused", permissions=["rebind"])
    def rebind_environments(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._confirm_then_perform(request, "rebind", queryset)

    @admin.action(description="Drain selected environments (move their apps elsewhere)", permissions=["change"])
    def drain_environments(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._confirm_then_perform(request, "drain", queryset)

    @admin.action(description="Undrain selected environments (take new apps again)", permissions=["change"])
    def undrain_environments(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._confirm_then_perform(request, "undrain", queryset)

    def _confirm_then_perform(self, request: HttpRequest, verb: str, queryset: QuerySet) -> HttpResponse | None:
        envs = list(queryset.order_by("name"))
        statuses = liveness.environment_statuses(envs)
        if verb == "forget":
            # Its worker would keep serving apps the registry no longer routes or commands.
            # ``unknown`` (a beat or two missed, or Redis unreachable) may still be online: refused too.
            alive = [
                env for env in envs if statuses[env.name][0] in (EnvironmentStatus.ONLINE, EnvironmentStatus.UNKNOWN)
            ]
            if alive:
                where = ", ".join(f"{env.name} is {statuses[env.name][0]}" for env in alive)
                self.message_user(request, FORGET_ONLINE.format(envs=where), messages.ERROR)
                return None
        if request.POST.get("confirm") == "yes":
            self._perform(request, verb, envs)
            return None  # back to the changelist, which shows the message
        rows = [(env, statuses[env.name][0], actions.placements_on(env)) for env in envs]
        context = {
            **self.admin_site.each_context(request),
            "title": f"{ENV_ACTIONS[verb].verb} {len(envs)} environment{pluralize(len(envs))}?",
            "opts": self.model._meta,
            "verb": ENV_ACTIONS[verb].verb,
            "explanation": ENV_ACTIONS[verb].explanation,
            "rows": rows,
            "action_name": f"{verb}_environments",
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            "changelist_url": reverse("admin:apps_registry_environment_changelist"),
        }
        return TemplateResponse(request, self.confirmation_template, context)

    def _perform(self, request: HttpRequest, verb: str, envs: list[Environment]) -> None:
        lost: list[str] = []
        done: list[Environment] = []
        for env in envs:
            try:
                if verb == "forget":
                    lost += actions.forget_environment(env, request.user)
                elif verb == "approve":
                    actions.approve_environment(env, request.user)
                elif verb == "drain":
                    job = lifecycle.request_drain(env, request.user)
                    url = reverse("admin:apps_registry_job_change", args=[job.pk])
                    self.message_user(request, format_html('{}: <a href="{}">drain job</a>', env.name, url))
                elif verb == "undrain":
                    lifecycle.request_undrain(env, request.user)
                elif verb == "rebind":
                    actions.rebind_environment(env, request.user)
                    forget_remembered_key(env.name)  # this process believes only the new key at once
                else:
                    actions.set_environment_enabled(env, verb == "enable", request.user)
            except (actions.NotApproved, actions.NothingToRebind) as error:
                self.message_user(request, f"{env.name}: {error}", messages.ERROR)
                continue
            done.append(env)
        if not done:
            return
        envs = done
        names = ", ".join(env.name for env in envs)
        message = f"{ENV_ACTIONS[verb].done} {len(envs)} environment{pluralize(len(envs))}: {names}."
        if lost:
            message += f" Placements removed: {', '.join(sorted(set(lost)))}."
        self.message_user(request, message, messages.SUCCESS)


@dataclass(frozen=True)
class EnvAction:
    verb: str
    done: str
    explanation: str


ENV_ACTIONS = {
    "disable": EnvAction(
        "Disable",
        "Disabled",
        "A disabled environment takes no new apps, the proxy stops sending it traffic and first visits do not "
        "start apps there; the apps placed on it (listed below) keep their placement and keep running.",
    ),
    "enable": EnvAction(
        "Enable", "Enabled", "The environment takes apps and traffic again; the apps placed on it are listed below."
    ),
    "approve": EnvAction(
        "Approve",
        "Approved",
        "The environment, bound to the key it registered with, is enabled: apps may be placed on it and the proxy "
        "sends it traffic.",
    ),
    "rebind": EnvAction(
        "Re-bind",
        "Re-bound",
        "Each environment is bound to the key its last refused message was signed with (shown in its identity "
        "column): only the worker holding that key is believed from now on, and the old key's messages are "
        "refused. Do this only for a worker you replaced yourself.",
    ),
    "drain": EnvAction(
        "Drain",
        "Draining",
        "The environment takes no new apps from now on, and a job moves every app placed on it (listed below) to "
        "its other environments or to the usable environment with the fewest apps, a few at a time, with no failed "
        "request; then it is empty and can be stopped or forgotten. Undrain to take apps again.",
    ),
    "undrain": EnvAction(
        "Undrain",
        "Undrained",
        "The environment takes new apps again; a drain under way is cancelled (moves not switched yet are rolled "
        "back, the apps moved already stay where they are).",
    ),
    "forget": EnvAction(
        "Forget",
        "Forgot",
        "The environment leaves the registry and every app listed below loses its placement there (an app "
        "placed nowhere else is placed nowhere). If its worker comes back it registers again and unloads the "
        "apps it still runs (their data kept).",
    ),
}
FORGET_ONLINE = (
    "Not forgotten: {envs}, and its worker would keep serving apps the registry no longer knows "
    "there. Disable it and remove (unload) its apps first, then stop its worker; forget it once it is "
    "offline or stopped."
)
