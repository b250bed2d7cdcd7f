"""Moving applications from the admin: the Applications list's "Move selected applications…"
action asks where to (the usable environments), then queues one move job per app
(``control.lifecycle``) and links each job's page, where its steps show their progress."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from apps_registry.control.lifecycle import requests as lifecycle
from apps_registry.models import Environment


class MoveForm(forms.Form):
    to = forms.ModelMultipleChoiceField(
        label="Move to",
        queryset=Environment.objects.filter(enabled=True, approved=True, draining=False),
        widget=forms.CheckboxSelectMultiple,
        help_text="Each app ends up on exactly these environments and leaves the others, with no failed request: "
        "it starts on the new ones, the route switches once it serves there, then it is unloaded from the old ones "
        "(data kept). Draining, disabled and unapproved environments are not offered.",
    )


class MoveActionMixin:
    """Goes before ``admin.ModelAdmin`` in the Applications ModelAdmin's bases."""

    move_template = "admin/apps_registry/application/move.html"

    def has_move_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("apps_registry.change_application") and request.user.has_perm(
            "apps_registry.start_application"
        )

    @admin.action(description="Move selected applications to other environments…", permissions=["move"])
    def move_applications(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        apps = list(queryset.order_by("name").prefetch_related("placements__environment"))
        form = MoveForm(request.POST if request.POST.get("confirm") == "yes" else None)
        if form.is_bound and form.is_valid():
            to = sorted(env.name for env in form.cleaned_data["to"])
            for app in apps:
                try:
                    job = lifecycle.request_move(app, to, request.user)
                except lifecycle.MoveRefused as refusal:
                    self.message_user(request, f"{app.name} not moved: {refusal}", messages.ERROR)
                    continue
                url = reverse("admin:apps_registry_job_change", args=[job.pk])
                self.message_user(
                    request, format_html('{}: moving to {} (<a href="{}">its job</a>)', app.name, ", ".join(to), url)
                )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": f"Move {len(apps)} application{'s' if len(apps) != 1 else ''}",
            "opts": self.model._meta,
            "apps": apps,
            "form": form,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            "changelist_url": reverse("admin:apps_registry_application_changelist"),
        }
        return TemplateResponse(request, self.move_template, context)
