"""API tokens in the admin: issued here (the raw value shown once, with a copy button), listed
read-only, and revoked behind a confirmation page, one token from its page or several from the
list. Issue and revoke go through ``apps_registry.registry.actions`` (each audited, naming who).
Never deleted: a revoked row keeps "who had access" answerable."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from apps_registry.admin.site import SupervisorMedia
from apps_registry.models import ApiToken
from apps_registry.registry import actions

CHANGELIST = "admin:apps_registry_apitoken_changelist"


class TokenStateFilter(admin.SimpleListFilter):
    """Active / Revoked, instead of Django's "By revoked at: Empty / Not empty"."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset  # an unknown value shows everything rather than a 500


class IssueTokenForm(forms.Form):
    user = forms.ModelChoiceField(
        queryset=get_user_model().objects.filter(is_active=True).order_by("username"),
        help_text="The token acts with this user's permissions.",
    )
    name = forms.CharField(
        max_length=100, required=False, help_text="What the token is for (a CI job, a script), shown in the list."
    )


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Only a prefix and the hash are stored; the raw token is shown once, on the page that
    issues it. ``manage.py create_api_token <username>`` issues one from a shell too."""

    list_display = ["prefix", "user", "name", "state", "created_at", "last_used_at", "revoked_at"]
    list_filter = [TokenStateFilter, ("user", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["prefix", "name", "user__username"]
    readonly_fields = ["user", "name", "prefix", "state", "created_at", "last_used_at", "revoked_at", "revoke"]
    fields = readonly_fields
    actions = ["revoke_tokens"]
    list_select_related = ["user"]
    Media = SupervisorMedia

    def has_change_permission(self, request: HttpRequest, obj: ApiToken | None = None) -> bool:
        # The token page is view-only (no useless SAVE); "change" is what revoking needs.
        if obj is not None:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: ApiToken | None = None) -> bool:
        return False  # revoke instead: the row keeps "who had access" answerable

    def may_revoke(self, request: HttpRequest) -> bool:
        return super().has_change_permission(request, None)

    @admin.display(description="state")
    def state(self, token: ApiToken) -> str:
        return "revoked" if token.revoked_at else "active"

    @admin.display(description="revoke")
    def revoke(self, token: ApiToken) -> str:
        if token.revoked_at:
            return "Revoked."
        url = reverse("admin:apps_registry_apitoken_revoke", args=[token.pk])
        return format_html('<a class="button" href="{}">Revoke this token…</a>', url)

    def get_urls(self) -> list[URLPattern]:
        revoke = path(
            "<path:object_id>/revoke/",
            self.admin_site.admin_view(self.revoke_view),
            name="apps_registry_apitoken_revoke",
        )
        return [revoke, *super().get_urls()]

    # --- Issuing ------------------------------------------------------------------------------

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None) -> HttpResponse:
        """A form (owner, name); on POST the token is issued and its value shown once."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = IssueTokenForm(request.POST if request.method == "POST" else None)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "form": form}
        if request.method == "POST" and form.is_valid():
            token, raw = actions.issue_api_token(
                form.cleaned_data["user"], name=form.cleaned_data["name"], actor=request.user, via="admin"
            )
            context.update(title="API token issued", token=token, raw=raw)
            # admin_view's never_cache makes it no-store: the value is not kept by the browser.
            return TemplateResponse(request, "admin/apps_registry/apitoken/issued.html", context)
        context["title"] = "Issue an API token"
        return TemplateResponse(request, "admin/apps_registry/apitoken/issue.html", context)

    # --- Revoking: behind a confirmation page -------------------------------------------------

    def revoke_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """``<pk>/revoke/``: GET asks for confirmation, POST with ``confirm=yes`` revokes."""
        if not self.may_revoke(request):
            raise PermissionDenied
        if not object_id.isdigit():
            return HttpResponseRedirect(reverse(CHANGELIST))
        token = get_object_or_404(ApiToken.objects.select_related("user"), pk=object_id)
        if request.method == "POST" and request.POST.get("confirm") == "yes":
            self._revoke(request, ApiToken.objects.filter(pk=token.pk))
            return HttpResponseRedirect(reverse(CHANGELIST))
        return self._confirmation(request, [token], bulk=False)

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        if request.POST.get("confirm") == "yes":
            self._revoke(request, queryset)
            return None  # back to the list, which shows the message
        return self._confirmation(request, list(queryset.select_related("user").order_by("pk")), bulk=True)

    def _revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = actions.revoke_api_tokens(queryset, actor=request.user)
        if count:
            self.message_user(request, f"Revoked {count} token{'s' if count != 1 else ''}.", messages.SUCCESS)
        else:
            self.message_user(request, "Nothing to revoke: already revoked.", messages.WARNING)

    def _confirmation(self, request: HttpRequest, tokens: list[ApiToken], *, bulk: bool) -> TemplateResponse:
        count = len(tokens)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Revoke {count} API token{'s' if count != 1 else ''}?",
            "opts": self.model._meta,
            "tokens": tokens,
            "bulk": bulk,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            "changelist_url": reverse(CHANGELIST),
        }
        return TemplateResponse(request, "admin/apps_registry/apitoken/confirm_revoke.html", context)
