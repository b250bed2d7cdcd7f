"""The audit trail (read-only, filterable by app and user) and API tokens (revocable) in the
admin. Entries are written only by ``apps_registry.registry.actions``."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from apps_registry.models import ApiToken, AuditEntry

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


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created with ``manage.py create_api_token <username>``; here they are listed
    and revoked. Only a prefix and the hash are stored."""

    list_display = ["prefix", "user", "name", "created_at", "last_used_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter), ("user", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["prefix", "name", "user__username"]
    readonly_fields = ["user", "name", "prefix", "created_at", "last_used_at", "revoked_at"]
    fields = readonly_fields
    actions = ["revoke_tokens"]
    list_select_related = ["user"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} token(s).", messages.SUCCESS)

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # revoke instead: the row keeps "who had access" answerable
