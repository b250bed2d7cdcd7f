"""Start, stop, restart and remove applications from the admin: bulk actions on the list and
buttons on each row, each behind a confirmation page and its own permission
(``apps_registry.start_application`` … ``remove_application``).

``OperationsMixin`` goes on the Applications ModelAdmin. The changelist it renders also links
the audit trail and the start queue's dashboard, where the starts it queues can be followed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis
from django.contrib import admin, messages
from django.contrib.admin.templatetags.admin_urls import add_preserved_filters
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.defaultfilters import pluralize
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from apps_registry.admin import offered
from apps_registry.models import Application
from apps_registry.registry import actions, outbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Operation:
    verb: str  # on buttons, titles and the confirmation page
    done: str  # starts the success message, before the apps' names
    explanation: str  # what the confirmation page says will happen


OPERATIONS: dict[str, Operation] = {
    "start": Operation(
        "Start", "Start queued for", "The start is queued; each app starts on its environments one after another."
    ),
    "stop": Operation("Stop", "Stop sent to", "The apps stop on every environment at once; their data is kept."),
    "restart": Operation("Restart", "Restart sent to", "The apps restart on every environment at once."),
    "remove": Operation(
        "Remove",
        "Remove sent to",
        "The apps are stopped and unloaded from every environment; they stay in the registry.",
    ),
}
UNAVAILABLE = "Redis (the command channel) is unavailable: "


def permission_name(operation: str) -> str:
    return f"apps_registry.{operation}_application"


def rq_dashboard_url() -> str:
    try:
        return reverse("admin:django_rq_dashboard_changelist")
    except NoReverseMatch:
        return "/admin/django_rq/dashboard/"


def send(
    operation: str,
    app: Application,
    user: AbstractBaseUser | None,
    *,
    drop_data: bool = False,
    environments: Sequence[str] | None = None,
) -> None:
    """One operation on one app, through the registry's actions (audit entry, command to the
    workers); on ``environments`` only when given, else on all of the app's."""
    match operation:
        case "start":
            actions.request_start(app, user, environments=environments)
        case "stop":
            actions.request_stop(app, user, environments=environments)
        case "restart":
            actions.request_restart(app, user, environments=environments)
        case "remove":
            actions.request_remove(app, user, drop_data=drop_data, environments=environments)
        case _:
            raise ValueError(f"unknown operation {operation!r}")


class OperationsMixin:
    """Goes before ``admin.ModelAdmin`` in the bases of the Applications ModelAdmin, which names
    the bulk actions it offers in ``actions`` (``start_applications`` …); the column of row
    buttons is appended by ``get_list_display``."""

    change_list_template = "admin/apps_registry/application/change_list.html"
    confirmation_template = "admin/apps_registry/application/confirm_operation.html"

    # --- Permissions (``@admin.action(permissions=[...])`` asks ``has_<name>_permission``) -----

    def may_perform(self, request: HttpRequest, operation: str) -> bool:
        return operation in OPERATIONS and request.user.has_perm(permission_name(operation))

    def has_start_permission(self, request: HttpRequest) -> bool:
        return self.may_perform(request, "start")

    def has_stop_permission(self, request: HttpRequest) -> bool:
        return self.may_perform(request, "stop")

    def has_restart_permission(self, request: HttpRequest) -> bool:
        return self.may_perform(request, "restart")

    def has_remove_permission(self, request: HttpRequest) -> bool:
        return self.may_perform(request, "remove")

    # --- Bulk actions ---------------------------------------------------------------------------

    @admin.action(description="Start selected applications", permissions=["start"])
    def start_applications(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._confirm_then_perform(request, "start", queryset)

    @admin.action(description="Stop selected applications", permissions=["stop"])
    def stop_applications(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._confirm_then_perform(request, "stop", queryset)

    @admin.action(description="Restart selected applications", permissions=["restart"])
    def restart_applications(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._confirm_then_perform(request, "restart", queryset)

    @admin.action(description="Remove selected applications", permissions=["remove"])
    def remove_applications(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._confirm_then_perform(request, "remove", queryset)

    def _confirm_then_perform(self, request: HttpRequest, operation: str, queryset: QuerySet) -> HttpResponse | None:
        apps = list(queryset.prefetch_related("placements__environment"))
        if request.POST.get("confirm") == "yes":
            self.perform(request, operation, apps)
            return None  # back to the changelist, which shows the messages
        return self.confirmation(request, operation, apps, bulk=True)

    # --- Row buttons and their page ------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        opts = self.model._meta
        row = path(
            "<path:object_id>/operation/<str:operation>/",
            self.admin_site.admin_view(self.operation_view),
            name=f"{opts.app_label}_{opts.model_name}_operation",
        )
        return [row, *super().get_urls()]

    def operation_view(self, request: HttpRequest, object_id: str, operation: str) -> HttpResponse:
        """``<pk>/operation/<operation>/[?environment=<env>]``: GET asks for confirmation, POST
        with ``confirm=yes`` acts, on that environment or on every one whose state offers the
        operation (``offered.targets``). What the state does not offer is refused with a
        message, nothing changed. ``?back=page`` returns to the app's page, else to the list
        with its search and filters (``_changelist_filters``)."""
        if not self.may_perform(request, operation):
            raise PermissionDenied
        queryset = self.model.objects.prefetch_related("placements__environment")
        app = get_object_or_404(queryset, pk=object_id) if object_id.isdigit() else None
        if app is None:
            return HttpResponseRedirect(self._changelist_url())
        back = self._back_url(request, app)
        placements = offered.placements_of(app)
        environment = request.GET.get("environment")
        if environment is not None:
            placement = next((p for p in placements if p.environment == environment), None)
            if placement is None or operation not in offered.PER_ENVIRONMENT:
                self.message_user(
                    request, f"{app.name} is not on an environment named {environment[:60]!r}.", messages.ERROR
                )
                return HttpResponseRedirect(back)
            if not offered.offered_on(operation, placement.shown):
                self.message_user(
                    request,
                    f"Not done: {app.name} is {placement.shown} on {environment}, nothing to {operation} there.",
                    messages.WARNING,
                )
                return HttpResponseRedirect(back)
            environments = [environment]
        else:
            environments = offered.targets(operation, placements)
            if placements and not environments:
                where = ", ".join(f"{p.shown} on {p.environment}" for p in placements)
                self.message_user(
                    request, f"Not done: {app.name} is {where}; nothing to {operation}.", messages.WARNING
                )
                return HttpResponseRedirect(back)
        if request.method == "POST" and request.POST.get("confirm") == "yes":
            self.perform(request, operation, [app], environments=environments)
            return HttpResponseRedirect(back)
        return self.confirmation(request, operation, [app], bulk=False, environments=environments, back=back)

    def _back_url(self, request: HttpRequest, app: Application) -> str:
        opts = self.model._meta
        if request.GET.get("back") == "page":
            return reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[app.pk])
        preserved = {"preserved_filters": self.get_preserved_filters(request), "opts": opts}
        return add_preserved_filters(preserved, self._changelist_url())

    def get_list_display(self, request: HttpRequest) -> list:
        # A list_display callable sees only the row; the buttons depend on the user's
        # permissions, so the column is built here, per request.
        return [*super().get_list_display(request), self.operations_column(request)]

    def operations_column(self, request: HttpRequest) -> Callable[[Application], str]:
        # Start, stop, restart: unloading (remove) is on the app's page and in the bulk actions,
        # away from the everyday buttons, and the row stays narrow enough for 1280 px.
        allowed = [operation for operation in offered.PER_ENVIRONMENT if self.may_perform(request, operation)]
        opts = self.model._meta
        url_name = f"admin:{opts.app_label}_{opts.model_name}_operation"
        # The list's search and filters ride along, and come back after the operation.
        preserved = self.get_preserved_filters(request)
        suffix = f"?{preserved}" if preserved else ""

        @admin.display(description="operations")
        def operations(app: Application) -> str:
            if not allowed:
                return "—"
            # Every allowed button is drawn; those the row's state does not offer are hidden, and
            # status.js shows them when the statuses change (data-from).
            shown = getattr(app, "shown_placements", None)
            return format_html(
                '<span class="appsup-ops">{}</span>',
                format_html_join(
                    "",
                    '<a class="button appsup-op" data-operation="{}" data-from="{}" href="{}{}"{}>{}</a>',
                    (
                        (
                            operation,
                            offered.offered_from(operation),
                            reverse(url_name, args=[app.pk, operation]),
                            suffix,
                            "" if shown is None or offered.targets(operation, shown) else mark_safe(" hidden"),
                            operation,
                        )
                        for operation in allowed
                    ),
                ),
            )

        return operations

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        context = {"rq_dashboard_url": rq_dashboard_url(), **(extra_context or {})}
        return super().changelist_view(request, context)

    # --- Confirmation and outcome --------------------------------------------------------------

    def confirmation(
        self,
        request: HttpRequest,
        operation: str,
        apps: list[Application],
        *,
        bulk: bool,
        environments: list[str] | None = None,
        back: str = "",
    ) -> TemplateResponse:
        """The page asking "<Verb> N applications?"; a bulk one posts the action back, a row one
        its own URL (query string included: the environment, where to go back)."""
        spec = OPERATIONS[operation]
        opts = self.model._meta
        title = f"{spec.verb} {len(apps)} application{pluralize(len(apps))}?"
        if environments is not None and len(apps) == 1:
            title = f"{spec.verb} {apps[0].name} on {', '.join(environments)}?"
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "environments": environments,
            "opts": opts,
            "operation": operation,
            "verb": spec.verb,
            "explanation": spec.explanation,
            "apps": apps,
            "bulk": bulk,
            "action_name": f"{operation}_applications",
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            "changelist_url": self._changelist_url(),
            "back_url": back or self._changelist_url(),
        }
        return TemplateResponse(request, self.confirmation_template, context)

    def perform(
        self, request: HttpRequest, operation: str, apps: list[Application], *, environments: list[str] | None = None
    ) -> None:
        """Send ``operation`` to each app as ``request.user`` (on ``environments`` only, when
        given); one success message, and one warning naming what Redis did not carry."""
        spec = OPERATIONS[operation]
        drop_data = operation == "remove" and request.POST.get("drop_data") == "on"
        unsent: list[str] = []
        outcomes: list[str] = []
        for app in apps:
            try:
                send(operation, app, request.user, drop_data=drop_data, environments=environments)
            except redis.RedisError as error:
                # Committed before the command could go out: apps_registry.registry.outbox closed the
                # request's audit entry (or left a start queued for recovery). Say so, not a 500.
                log.warning("admin %s of %s: Redis unavailable", operation, app.name, exc_info=True)
                unsent.append(app.name)
                if isinstance(error, outbox.NotDelivered):
                    outcomes.append(str(error).removeprefix(UNAVAILABLE))
        names = ", ".join(app.name for app in apps[:10]) + (" …" if len(apps) > 10 else "")
        if environments is not None:
            names += f" (on {', '.join(environments)})"
        self.message_user(
            request, f"{spec.done} {len(apps)} application{pluralize(len(apps))}: {names}.", messages.SUCCESS
        )
        if unsent:
            detail = (
                " ".join(outcomes[:10])
                if outcomes
                else f"the {operation} of {', '.join(unsent[:10])} is recorded in the registry only."
            )
            self.message_user(request, UNAVAILABLE + detail, messages.WARNING)

    def _changelist_url(self) -> str:
        opts = self.model._meta
        return reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
