"""The audit trail in the admin: read-only, filterable by app and user, and an app's recent
history for its change page. Entries are written only by ``apps_registry.registry.actions``."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.timezone import localtime

from apps_registry.admin import queue
from apps_registry.admin.site import SupervisorMedia
from apps_registry.models import Application, AuditEntry

MAX_APP_CHOICES = 200
HISTORY_ROWS = 10

# Where the stored name (kept as is: filters, the API and old entries use it) reads badly
# once its underscores become spaces.
ACTION_LABELS = {
    "set_environments": "Environments changed",
    "failover": "Failed over",
    "remove_with_data": "Removed, with its data",
    "api_token_issued": "API token issued",
    "api_token_revoked": "API token revoked",
}


def _cut(text: str) -> str:
    return format_html('<span class="appsup-ellipsis" title="{0}">{0}</span>', text)


def action_label(action: str) -> str:
    """A stored action name as people read it: ``environment_registered`` → "Environment registered"."""
    return ACTION_LABELS.get(action) or action.replace("_", " ").capitalize()


class AppNameFilter(admin.SimpleListFilter):
    title = "application"
    parameter_name = "app_name"

    def lookups(self, request, model_admin):
        names = (
            AuditEntry.objects.exclude(app_name="")
            .order_by("app_name")
            .values_list("app_name", flat=True)
            .distinct()[:MAX_APP_CHOICES]
        )
        return [(name, name) for name in names]

    def queryset(self, request, queryset):
        return queryset.filter(app_name=self.value()) if self.value() else queryset


class ActionFilter(admin.SimpleListFilter):
    """By action, labelled as the list shows them; the parameter is the stored name (``?action=``)."""

    title = "action"
    parameter_name = "action"

    def lookups(self, request, model_admin):
        names = AuditEntry.objects.order_by("action").values_list("action", flat=True).distinct()
        return [(name, action_label(name)) for name in names]

    def queryset(self, request, queryset):
        return queryset.filter(action=self.value()) if self.value() else queryset


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = [
        "at",
        "user",
        "app_name_shown",
        "action_shown",
        "environments_list",
        "result",
        "error_shown",
        "via",
        "request_id_shown",
    ]
    # The entry's page: the list's columns, then how each environment's part of it ended.
    fields = [
        "at",
        "user",
        "app_name",
        "action_shown",
        "environments_list",
        "result",
        "error",
        "via",
        "request_id",
        "outcomes",
        "awaiting_convergence",
        "start_queue",
    ]
    readonly_fields = ["action_shown", "environments_list", "start_queue"]
    list_filter = [AppNameFilter, ("user", admin.RelatedOnlyFieldListFilter), ActionFilter, "result", "via"]
    search_fields = ["app_name", "action", "request_id", "error", "user__username"]
    date_hierarchy = "at"
    list_select_related = ["user"]
    list_per_page = 100
    Media = SupervisorMedia

    @admin.display(description="action", ordering="action")
    def action_shown(self, entry: AuditEntry) -> str:
        return action_label(entry.action)

    @admin.display(description="start queue")
    def start_queue(self, entry: AuditEntry) -> str:
        """A start still waiting: its place in the queue and its job (the dashboard links back here)."""
        if entry.action != "start" or entry.result != AuditEntry.Result.PENDING:
            return "—"
        found = queue.job_of_request(entry.request_id)
        if found is None:
            return "not waiting in the queue"
        position, job_id, url = found
        if url:
            return format_html('position {} (<a href="{}">job {}</a>)', position, url, job_id)
        return f"position {position} (job {job_id})"

    # Long values cut with an ellipsis (whole in the title): Via and Request ID stay on screen.
    @admin.display(description="app name", ordering="app_name")
    def app_name_shown(self, entry: AuditEntry) -> str:
        return _cut(entry.app_name or "—")

    @admin.display(description="error")
    def error_shown(self, entry: AuditEntry) -> str:
        return _cut(entry.error) if entry.error else ""

    @admin.display(description="request id", ordering="request_id")
    def request_id_shown(self, entry: AuditEntry) -> str:
        return _cut(entry.request_id or "—")

    @admin.display(description="environments")
    def environments_list(self, entry: AuditEntry) -> str:
        return ", ".join(entry.environments or []) or "—"

    # The trail is written by the actions only: nobody adds, edits or deletes an entry here.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


def outcomes_text(entry: AuditEntry) -> str:
    """How the request ended on each environment: ``env_a: ok, env_b: converged later``."""
    return ", ".join(f"{env}: {outcome}" for env, outcome in sorted((entry.outcomes or {}).items())) or "—"


def recent_history(app: Application | None) -> str:
    """The app's last requests as a table, and a link to its full audit trail."""
    if app is None or app.pk is None:
        return "—"
    entries = list(AuditEntry.objects.filter(app_name=app.name).select_related("user")[:HISTORY_ROWS])
    if not entries:
        return "No requests yet."
    rows = format_html_join(
        "",
        '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
        (
            (
                reverse("admin:apps_registry_auditentry_change", args=[entry.pk]),
                date_format(localtime(entry.at), "DATETIME_FORMAT"),  # as the lists show dates
                entry.user or "—",
                action_label(entry.action),
                ", ".join(entry.environments) or "—",
                entry.result,
                outcomes_text(entry),
                entry.error or "",
            )
            for entry in entries
        ),
    )
    link = reverse("admin:apps_registry_auditentry_changelist") + f"?app_name={app.name}"
    return format_html(
        '<table class="appsup-history"><thead><tr><th>when</th><th>who</th><th>what</th><th>environments</th>'
        "<th>result</th><th>per environment</th><th>error</th></tr></thead><tbody>{}</tbody></table>"
        '<p><a href="{}">Full audit trail of {}</a></p>',
        rows,
        link,
        app.name,
    )
