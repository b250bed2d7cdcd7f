"""Start, stop, restart and remove applications from the admin: bulk actions on the list,
buttons on each row, each behind a confirmation page and its own permission
(``apps_registry.start_application`` … ``remove_application``). Also the app page's recent
history and the links to the audit trail and the start queue's dashboard.

``install(ApplicationAdmin)`` (called by ``apps_registry.admin.applications``) adds all of it to the
Applications admin without changing its class.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils.html import format_html, format_html_join

from apps_registry.models import Application, AuditEntry
from apps_registry.registry import actions, outbox

log = logging.getLogger(__name__)

HISTORY_ROWS = 10
# The user of the changelist being rendered in this thread, for the per-row buttons.
_rendering = threading.local()


def _remove(app: Application, user, *, drop_data: bool = False) -> str:
    return actions.request_remove(app, user, drop_data=drop_data)


OPERATIONS: dict[str, dict] = {
    "start": {"run": actions.request_start, "verb": "Start", "done": "Start queued for"},
    "stop": {"run": actions.request_stop, "verb": "Stop", "done": "Stop sent to"},
    "restart": {"run": actions.request_restart, "verb": "Restart", "done": "Restart sent to"},
    "remove": {"run": _remove, "verb": "Remove", "done": "Remove sent to"},
}
EXPLANATIONS = {
    "start": "The start is queued; each app starts on its environments one after another.",
    "stop": "The apps stop on every environment at once; their data is kept.",
    "restart": "The apps restart on every environment at once.",
    "remove": "The apps are stopped and unloaded from every environment; they stay in the registry.",
}


def permission_name(operation: str) -> str:
    return f"apps_registry.{operation}_application"


def _perform(request: HttpRequest, operation: str, apps: list[Application]) -> None:
    spec = OPERATIONS[operation]
    drop = operation == "remove" and request.POST.get("drop_data") == "on"
    unsent: list[str] = []
    outcomes: list[str] = []
    for app in apps:
        try:
            if operation == "remove":
                spec["run"](app, request.user, drop_data=drop)
            else:
                spec["run"](app, request.user)
        except redis.RedisError as error:
            # Committed before the command could go out: apps_registry.registry.outbox closed the
            # request's audit entry (or left a start queued for recovery). Say so, not a 500.
            log.warning("admin %s of %s: Redis unavailable", operation, app.name, exc_info=True)
            unsent.append(app.name)
            if isinstance(error, outbox.NotDelivered):
                outcomes.append(str(error).removeprefix("Redis (the command channel) is unavailable: "))
    names = ", ".join(app.name for app in apps[:10]) + (" …" if len(apps) > 10 else "")
    messages.success(request, f"{spec['done']} {len(apps)} application(s): {names}.")
    if unsent:
        messages.warning(
            request,
            f"Redis (the command channel) is unavailable: {' '.join(outcomes[:10])}"
            if outcomes
            else f"Redis (the command channel) is unavailable: the {operation} of {', '.join(unsent[:10])} is "
            "recorded in the registry only.",
        )


def _confirmation(
    model_admin: admin.ModelAdmin, request: HttpRequest, operation: str, apps: list[Application], bulk: bool
) -> TemplateResponse:
    opts = model_admin.model._meta
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"{OPERATIONS[operation]['verb']} {len(apps)} application(s)?",
        "opts": opts,
        "operation": operation,
        "verb": OPERATIONS[operation]["verb"],
        "explanation": EXPLANATIONS[operation],
        "apps": apps,
        "bulk": bulk,
        "action_name": f"{operation}_applications",
        "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        "changelist_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
    }
    return TemplateResponse(request, "admin/apps_registry/application/confirm_operation.html", context)


def _bulk_action(operation: str) -> Callable:
    def action(model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        apps = list(queryset.prefetch_related("placements__environment"))
        if request.POST.get("confirm") == "yes":
            _perform(request, operation, apps)
            return None
        return _confirmation(model_admin, request, operation, apps, bulk=True)

    action.__name__ = f"{operation}_applications"
    return admin.action(description=f"{OPERATIONS[operation]['verb']} selected applications", permissions=[operation])(
        action
    )


def _row_view(model_admin: admin.ModelAdmin) -> Callable:
    def view(request: HttpRequest, object_id: str, operation: str) -> HttpResponse:
        if operation not in OPERATIONS:
            raise PermissionDenied
        if not request.user.has_perm(permission_name(operation)):
            raise PermissionDenied
        app = get_object_or_404(Application.objects.prefetch_related("placements__environment"), pk=object_id)
        if request.method == "POST" and request.POST.get("confirm") == "yes":
            _perform(request, operation, [app])
            return HttpResponseRedirect(reverse("admin:apps_registry_application_changelist"))
        return _confirmation(model_admin, request, operation, [app], bulk=False)

    return model_admin.admin_site.admin_view(view)


def _operations_column() -> Callable:
    @admin.display(description="operations")
    def operations(self, app: Application) -> str:
        user = getattr(_rendering, "user", None)
        allowed = [op for op in OPERATIONS if user is None or user.has_perm(permission_name(op))]
        if not allowed:
            return "—"
        return format_html_join(
            " ",
            '<a class="button appsup-op" href="{}">{}</a>',
            ((reverse("admin:apps_registry_application_operation", args=[app.pk, op]), op) for op in allowed),
        )

    return operations


@admin.display(description="recent history")
def recent_history(self, app: Application) -> str:
    if app is None or app.pk is None:
        return "—"
    entries = list(AuditEntry.objects.filter(app_name=app.name).select_related("user")[:HISTORY_ROWS])
    if not entries:
        return "No requests yet."
    rows = format_html_join(
        "",
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        (
            (
                f"{entry.at:%Y-%m-%d %H:%M:%S}",
                entry.user or "—",
                entry.action,
                ", ".join(entry.environments) or "—",
                entry.result,
                entry.error or "",
            )
            for entry in entries
        ),
    )
    link = reverse("admin:apps_registry_auditentry_changelist") + f"?app_name={app.name}"
    return format_html(
        '<table class="appsup-history"><thead><tr><th>when</th><th>who</th><th>what</th><th>environments</th>'
        '<th>result</th><th>error</th></tr></thead><tbody>{}</tbody></table><p><a href="{}">Full audit trail of {}'
        "</a></p>",
        rows,
        link,
        app.name,
    )


def rq_dashboard_url() -> str:
    try:
        return reverse("admin:django_rq_dashboard_changelist")
    except NoReverseMatch:
        return "/admin/django_rq/dashboard/"


def install(model_admin_class: type) -> None:
    """Add the operations to the Applications admin (called once, from apps_registry.admin.applications)."""
    for operation in OPERATIONS:
        name = f"{operation}_applications"
        setattr(model_admin_class, name, _bulk_action(operation))
        setattr(
            model_admin_class,
            f"has_{operation}_permission",
            lambda self, request, _op=operation: request.user.has_perm(permission_name(_op)),
        )
        if name not in model_admin_class.actions:
            model_admin_class.actions = [*model_admin_class.actions, name]

    model_admin_class.operations = _operations_column()
    if "operations" not in model_admin_class.list_display:
        model_admin_class.list_display = [*model_admin_class.list_display, "operations"]
    model_admin_class.recent_history = recent_history

    # "Start now" on the add page: the new app's start is queued like any other.
    model_admin_class.form = type(
        "StartNowApplicationForm",
        (model_admin_class.form,),
        {
            "start_now": forms.BooleanField(
                label="Start now", required=False, help_text="Queue a start on its environments once created."
            )
        },
    )
    original_save_model = model_admin_class.save_model

    def save_model(self, request, obj, form, change):
        original_save_model(self, request, obj, form, change)
        if not change and form.cleaned_data.get("start_now") and request.user.has_perm(permission_name("start")):
            actions.request_start(Application.objects.get(pk=obj.pk), request.user)

    model_admin_class.save_model = save_model

    original_urls = model_admin_class.get_urls
    original_changelist = model_admin_class.changelist_view
    original_readonly = model_admin_class.get_readonly_fields
    original_fieldsets = model_admin_class.get_fieldsets

    def get_urls(self):
        extra = [
            path(
                "<path:object_id>/operation/<str:operation>/",
                _row_view(self),
                name="apps_registry_application_operation",
            )
        ]
        return extra + original_urls(self)

    def changelist_view(self, request, extra_context=None):
        _rendering.user = request.user
        context = {"rq_dashboard_url": rq_dashboard_url(), **(extra_context or {})}
        try:
            response = original_changelist(self, request, context)
            if hasattr(response, "render"):
                response.render()  # while the user is known to the operations column
            return response
        finally:
            _rendering.user = None

    def get_readonly_fields(self, request, obj=None):
        fields = list(original_readonly(self, request, obj))
        return [*fields, "recent_history"] if obj is not None else fields

    def get_fieldsets(self, request, obj=None):
        fieldsets = list(original_fieldsets(self, request, obj))
        if obj is not None:
            fieldsets.append(("Recent history", {"fields": ["recent_history"]}))
        elif request.user.has_perm(permission_name("start")):
            fieldsets.append(("Start", {"fields": ["start_now"]}))
        return fieldsets

    model_admin_class.get_urls = get_urls
    model_admin_class.changelist_view = changelist_view
    model_admin_class.get_readonly_fields = get_readonly_fields
    model_admin_class.get_fieldsets = get_fieldsets
    model_admin_class.change_list_template = "admin/apps_registry/application/change_list.html"
