"""The audit trail in the admin: read-only, filterable by app and user. Entries are written
only by ``apps_registry.registry.actions``."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from apps_registry.models import AuditEntry

MAX_APP_CHOICES = 200


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


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ["at", "user", "app_name", "action", "environments_list", "result", "error", "via", "request_id"]
    list_filter = [AppNameFilter, ("user", admin.RelatedOnlyFieldListFilter), "action", "result", "via"]
    search_fields = ["app_name", "action", "request_id", "error", "user__username"]
    date_hierarchy = "at"
    list_select_related = ["user"]
    list_per_page = 100

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
