"""Backups on the app's admin page: its backups with their last verified restore, "Back up now"
and "Restore…" (into the app itself, or as a new app), each behind a confirmation page and its
permission (``apps_registry.add_backup``, ``apps_registry.restore_backup``; a clone also needs
``add_application``), requested through ``apps_registry.registry.actions`` (audited). The list
flags apps whose newest backup is not proven restorable (``control.backups.health``)."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.timezone import localtime

from apps_registry.control.backups import health
from apps_registry.control.backups.jobs import dispatch
from apps_registry.models import Application, Backup, BackupStatus
from apps_registry.names import validate_app_name
from apps_registry.registry import actions

ROWS = 10


def _when(value) -> str:
    return date_format(localtime(value), "DATETIME_FORMAT") if value else "never"


def flag(state: health.BackupHealth | None) -> str:
    """The list's backups column: the last verified restore, or why the app is flagged."""
    if state is None or state.flag == health.NO_BACKUP:
        return format_html('<span class="appsup-backup-flag" title="{}">⚠ no backup</span>', health.NO_BACKUP)
    if state.flag:
        return format_html('<span class="appsup-backup-flag">⚠ {}</span>', state.flag)
    return format_html("verified {}", _when(state.last_verified_at))


class BackupsMixin:
    """Goes on the Applications ModelAdmin: the URLs of its backup pages and the page's block."""

    backup_confirmation_template = "admin/apps_registry/application/confirm_backup.html"

    def get_urls(self) -> list[URLPattern]:
        opts = self.model._meta
        prefix = f"{opts.app_label}_{opts.model_name}"
        return [
            path(
                "<path:object_id>/backups/new/",
                self.admin_site.admin_view(self.backup_view),
                name=f"{prefix}_backup",
            ),
            path(
                "<path:object_id>/backups/<uuid:backup_id>/restore/",
                self.admin_site.admin_view(self.restore_view),
                name=f"{prefix}_restore",
            ),
            *super().get_urls(),
        ]

    def _change_url(self, app: Application) -> str:
        return reverse("admin:apps_registry_application_change", args=[app.pk])

    def _confirm(self, request: HttpRequest, app: Application, **context) -> TemplateResponse:
        page = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "app": app,
            "change_url": self._change_url(app),
            "may_clone": request.user.has_perm("apps_registry.add_application"),
            **context,
        }
        return TemplateResponse(request, self.backup_confirmation_template, page)

    def backup_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not request.user.has_perm("apps_registry.add_backup"):
            raise PermissionDenied
        app = get_object_or_404(Application, pk=object_id)
        if request.method == "POST" and request.POST.get("confirm") == "yes":
            with transaction.atomic():
                _backup, job = actions.request_backup(app, user=request.user)
                dispatch(job)
            messages.success(request, f"Backup of {app.name} queued (job {job.pk}).")
            return HttpResponseRedirect(self._change_url(app))
        return self._confirm(
            request,
            app,
            title=f"Back up {app.name} now?",
            verb="Back up",
            explanation="Its database and uploaded files are copied to the backup store; the app keeps serving.",
        )

    def restore_view(self, request: HttpRequest, object_id: str, backup_id: uuid.UUID) -> HttpResponse:
        if not request.user.has_perm("apps_registry.restore_backup"):
            raise PermissionDenied
        app = get_object_or_404(Application, pk=object_id)
        backup = get_object_or_404(Backup, pk=backup_id, app_name=app.name, status=BackupStatus.SUCCEEDED)
        context = {
            "title": f"Restore {app.name} from its backup of {_when(backup.created_at)}?",
            "verb": "Restore",
            "backup": backup,
            "explanation": (
                "The app is stopped where it runs, its database and uploaded files are replaced by the backup's "
                "(what changed since is lost), then it is started again through the start queue. "
                "Or give a new name: a new app gets the backup's data, and the app stays as it is."
            ),
        }
        if request.method != "POST" or request.POST.get("confirm") != "yes":
            return self._confirm(request, app, **context)
        clone_name = request.POST.get("as", "").strip()
        with transaction.atomic():
            if clone_name:
                error = self._clone_refusal(request, clone_name)
                if error:
                    messages.error(request, error)
                    return self._confirm(request, app, clone_name=clone_name, **context)
                options = {k: v for k, v in (app.options or {}).items() if k != "database"}
                clone = actions.create_application(
                    name=clone_name,
                    environments=[p.environment for p in app.placements.select_related("environment")],
                    user=request.user,
                    display_name=f"{app.display_name or app.name} (clone)",
                    description=f"Cloned from {app.name}, backup {backup.pk}",
                    options=options,
                )
                job = actions.request_clone(backup, clone, user=request.user)
                message = f"Clone of {app.name} as {clone_name} queued (job {job.pk})."
            else:
                job = actions.request_restore(app, backup, user=request.user)
                message = f"Restore of {app.name} queued (job {job.pk}): it stops, is restored, then starts."
            dispatch(job)
        messages.success(request, message)
        return HttpResponseRedirect(self._change_url(app))

    def _clone_refusal(self, request: HttpRequest, name: str) -> str:
        if not request.user.has_perm("apps_registry.add_application"):
            return "Cloning needs the permission to add applications."
        try:
            validate_app_name(name)
        except ValidationError as error:
            return f"Not a valid name for the new app: {' '.join(error.messages)}"
        if Application.objects.filter(name=name).exists():
            return f"An application named {name} already exists."
        return ""

    def backups_block(self, app: Application | None, user=None) -> str:
        """The change page's block: last verified restore, the newest backups, the buttons."""
        if app is None or app.pk is None:
            return "—"
        state = health.of_apps([app.name]).get(app.name)
        backups = list(Backup.objects.filter(app_name=app.name)[:ROWS])
        new_url = reverse("admin:apps_registry_application_backup", args=[app.pk])
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            (
                (
                    _when(b.created_at),
                    b.status + (f": {b.error[:200]}" if b.error else ""),
                    filesizeformat(b.size) if b.size else "—",
                    b.checksum[:12] or "—",
                    _verified(b),
                    format_html(
                        '<a class="button" href="{}">Restore…</a>',
                        reverse("admin:apps_registry_application_restore", args=[app.pk, b.pk]),
                    )
                    if b.status == BackupStatus.SUCCEEDED
                    else "",
                )
                for b in backups
            ),
        )
        return format_html(
            '<p class="appsup-backup-state">Last verified restore: <strong>{}</strong>{}</p>'
            '<table class="appsup-history"><thead><tr><th>taken</th><th>status</th><th>size</th><th>sha256</th>'
            "<th>restore drill</th><th></th></tr></thead><tbody>{}</tbody></table>"
            '<p><a class="button" href="{}">Back up now</a></p>',
            _when(state.last_verified_at if state else None),
            format_html(" — ⚠ {}", state.flag) if state and state.flag else "",
            rows or mark_safe('<tr><td colspan="6">No backups yet.</td></tr>'),  # noqa: S308 (a constant)
            new_url,
        )


def _verified(backup: Backup) -> str:
    if backup.verify_status == "verified":
        return f"verified {_when(backup.verified_at)}"
    if backup.verify_status == "failed":
        return f"failed {_when(backup.drilled_at)}: {backup.verify_error[:200]}"
    return "not yet"
