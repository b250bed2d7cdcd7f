"""Tracked jobs in the admin: read-only, each with its steps (status, times, errors) in order.
Jobs are created and advanced by ``apps_registry.registry.jobs`` only."""

from __future__ import annotations

from django.contrib import admin, messages
from django.http import HttpRequest
from django.urls import reverse
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.timezone import localtime

from apps_registry.admin.site import SupervisorMedia
from apps_registry.control.lifecycle import requests as lifecycle
from apps_registry.models import Job, JobStep


def _when(value) -> str:
    return date_format(localtime(value), "DATETIME_FORMAT") if value else "—"


def _took(step: JobStep) -> str:
    if step.started_at and step.finished_at:
        return f"{(step.finished_at - step.started_at).total_seconds():.1f} s"
    return ""


def progress(job: Job) -> str:
    """``3/6 · switch route``: steps done of all, and the one running."""
    steps = list(job.steps.all())
    done = sum(step.status in ("succeeded", "skipped") for step in steps)
    running = next((step.name for step in steps if step.status == "running"), "")
    return f"{done}/{len(steps)}" + (f" · {running}" if running else "")


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
    actions = ["cancel_jobs"]
    Media = SupervisorMedia

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("apps_registry.cancel_job")

    @admin.action(description="Cancel selected jobs (a move only up to its switch)", permissions=["cancel"])
    def cancel_jobs(self, request: HttpRequest, queryset) -> None:
        asked = [job for job in queryset if lifecycle.cancel(job, request.user)]
        done = queryset.count() - len(asked)
        message = f"Cancel asked of {len(asked)} job{'s' if len(asked) != 1 else ''}"
        if done:
            message += f"; {done} finished already"
        self.message_user(request, message + ".", messages.SUCCESS if asked else messages.WARNING)

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).prefetch_related("steps")

    @admin.display(description="subject")
    def subject(self, job: Job) -> str:
        return job.app_name or (job.environment.name if job.environment_id else "—")

    @admin.display(description="progress")
    def progress(self, job: Job) -> str:
        return progress(job)

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


RECENT_JOBS = 5


def recent_jobs(app) -> str:
    """The app's last moves (its own and its drains'), each linked to its page with its steps."""
    if app is None or app.pk is None:
        return "—"
    rows = list(Job.objects.filter(app_name=app.name).prefetch_related("steps")[:RECENT_JOBS])
    if not rows:
        return "Never moved."
    items = format_html_join(
        "",
        '<li><a href="{}">{} {}</a>: {} ({}){}</li>',
        (
            (
                reverse("admin:apps_registry_job_change", args=[job.pk]),
                job.kind,
                _when(job.created_at),
                job.status,
                progress(job),
                f" — {job.error}" if job.error else "",
            )
            for job in rows
        ),
    )
    return format_html('<ul class="appsup-jobs">{}</ul>', items)
