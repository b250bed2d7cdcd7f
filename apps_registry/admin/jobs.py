"""Tracked jobs in the admin: read-only, each with its steps (status, times, errors) in order.
Jobs are created and advanced by ``apps_registry.registry.jobs`` only."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.timezone import localtime

from apps_registry.admin.site import SupervisorMedia
from apps_registry.models import Job, JobStep


def _when(value) -> str:
    return date_format(localtime(value), "DATETIME_FORMAT") if value else "—"


def _took(step: JobStep) -> str:
    if step.started_at and step.finished_at:
        return f"{(step.finished_at - step.started_at).total_seconds():.1f} s"
    return ""


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["created_at", "kind", "subject", "status", "progress", "requested_by", "finished_at", "error"]
    list_filter = ["kind", "status"]
    search_fields = ["app_name", "environment__name", "id", "error"]
    list_select_related = ["environment", "requested_by"]
    date_hierarchy = "created_at"
    fields = [
        "id",
        "kind",
        "subject",
        "status",
        "params",
        "steps_table",
        "error",
        "requested_by",
        "created_at",
        "started_at",
        "finished_at",
        "cancel_requested",
        "attempts",
        "parent",
    ]
    readonly_fields = fields
    Media = SupervisorMedia

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).prefetch_related("steps")

    @admin.display(description="subject")
    def subject(self, job: Job) -> str:
        return job.app_name or (job.environment.name if job.environment_id else "—")

    @admin.display(description="progress")
    def progress(self, job: Job) -> str:
        steps = list(job.steps.all())
        done = sum(step.status in ("succeeded", "skipped") for step in steps)
        running = next((step.name for step in steps if step.status == "running"), "")
        return f"{done}/{len(steps)}" + (f" · {running}" if running else "")

    @admin.display(description="steps")
    def steps_table(self, job: Job) -> str:
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((s.position + 1, s.name, s.status, _when(s.started_at), _took(s), s.error) for s in job.steps.all()),
        )
        return format_html(
            '<table class="appsup-steps"><thead><tr><th>#</th><th>step</th><th>status</th><th>started</th>'
            "<th>took</th><th>error</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
