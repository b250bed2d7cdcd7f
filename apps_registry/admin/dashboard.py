"""The admin's index as a dashboard: environments by status, applications by status, the start
queue's depth and its jobs (each linked to its app and audit entry), the recent errors (linked
to the app and the audit entry), and, instead of Django's "Recent actions" (the admin's own
creates and edits only), the audit trail's last entries.

Each figure is read for users who may view what it counts; the whole costs a handful of
queries and one Redis round trip for liveness (plus one for the queue).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from django.contrib import admin
from django.contrib.admin.sites import AdminSite
from django.db import models
from django.http import HttpRequest, HttpResponse
from django.urls import reverse

from apps_registry.admin import queue as queue_admin
from apps_registry.admin.audit import action_label, outcomes_text
from apps_registry.admin.site import apply_worker_events
from apps_registry.control import liveness, redis_client
from apps_registry.control.shown_status import UNKNOWN, shown_status
from apps_registry.models import AppEnvironment, Application, AppStatus, AuditEntry, Environment, EnvironmentStatus

log = logging.getLogger(__name__)

RECENT_ERRORS = 8
RECENT_ENTRIES = 10
QUEUE_JOBS = 10
ENV_ORDER = [EnvironmentStatus.ONLINE, EnvironmentStatus.UNKNOWN, EnvironmentStatus.OFFLINE, EnvironmentStatus.STOPPED]
APP_ORDER = ["running", "starting", "queued", "stopping", "error", "unknown", "stopped"]
APPS = "admin:apps_registry_application_changelist"


@dataclass(frozen=True)
class Count:
    status: str
    count: int
    url: str  # where the rows counted are listed ("" when no filter shows them)


@dataclass(frozen=True)
class Job:
    """A start waiting in the queue: its position, app, environments, audit entry and job page."""

    position: int
    app: str
    app_url: str
    environments: str
    entry_url: str
    job_url: str


@dataclass(frozen=True)
class Problem:
    """An app in error on an environment now, or a request that ended in error."""

    at: object
    app: str
    app_url: str
    what: str
    error: str
    entry_url: str


def _entry_urls(request_ids: list[str]) -> dict[str, str]:
    found = AuditEntry.objects.filter(request_id__in=[r for r in request_ids if r]).values_list("request_id", "pk")
    return {rid: reverse("admin:apps_registry_auditentry_change", args=[pk]) for rid, pk in found}


def _app_urls(names: list[str]) -> dict[str, str]:
    found = Application.objects.filter(name__in=names).values_list("name", "pk")
    return {name: reverse("admin:apps_registry_application_change", args=[pk]) for name, pk in found}


def environment_statuses() -> dict[str, tuple[str, object]]:
    """Every environment's liveness (one Redis round trip), for both counts below."""
    return liveness.environment_statuses(list(Environment.objects.all()))


def environments_by_status(statuses: dict[str, tuple[str, object]]) -> list[Count]:
    counted = Counter(str(status) for status, _ in statuses.values())
    url = reverse("admin:apps_registry_environment_changelist")
    return [Count(s, counted[s], url) for s in ENV_ORDER if counted[s]]


def apps_by_status(statuses: dict[str, tuple[str, object]]) -> tuple[list[Count], int]:
    """Each status with the number of apps shown so on at least one environment (an app on two
    environments may count under two statuses, as the list's "status on any environment"
    filter finds it). One query whatever the fleet: the shown status is worked out in SQL from
    the environments that are not online (``shown_status``'s rule)."""
    not_online = [name for name, (status, _) in statuses.items() if status != EnvironmentStatus.ONLINE]
    # The observed statuses an unreachable environment makes unknown, from the rule itself.
    doubtful = [s for s in AppStatus.values if shown_status(s, EnvironmentStatus.OFFLINE) == UNKNOWN]
    shown = models.Case(
        models.When(environment__name__in=not_online, status__in=doubtful, then=models.Value(UNKNOWN)),
        default=models.F("status"),
        output_field=models.CharField(),
    )
    rows = (
        AppEnvironment.objects.annotate(shown=shown)
        .values("shown")
        .annotate(apps=models.Count("application", distinct=True))
        .values_list("shown", "apps")
    )
    seen = dict(rows)
    base = reverse(APPS)
    counts = [Count(s, seen[s], f"{base}?status={s}" if s in AppStatus.values else "") for s in APP_ORDER if s in seen]
    return counts, Application.objects.count()


def start_queue() -> tuple[int | None, list[Job]]:
    """The queue's depth and its first jobs; ``None`` when it cannot be read."""
    if not redis_client.configured():
        return None, []
    try:
        from apps_registry.control.start_queue import enqueue

        queue = enqueue.get_queue()
        depth = queue.count
        jobs = queue.get_jobs(0, QUEUE_JOBS)
    except Exception:
        log.warning("dashboard: could not read the start queue", exc_info=True)
        return None, []
    names = [enqueue.app_of_job(job.id) or "" for job in jobs]
    apps, entries = _app_urls(names), _entry_urls([job.kwargs.get("request_id", "") for job in jobs])
    found = []
    for position, (job, name) in enumerate(zip(jobs, names, strict=True), start=1):
        environments = job.args[1] if len(job.args) > 1 else []
        found.append(
            Job(
                position,
                name,
                apps.get(name, ""),
                ", ".join(environments),
                entries.get(job.kwargs.get("request_id", ""), ""),
                queue_admin.job_url(job.id),
            )
        )
    return depth, found


def recent_errors() -> list[Problem]:
    """Apps in error now (their last error), then requests that ended in error, newest first."""
    now = [
        (p.status_changed_at, p.application.name, f"error on {p.environment.name}", p.error, "")
        for p in AppEnvironment.objects.filter(status=AppStatus.ERROR)
        .select_related("application", "environment")
        .order_by("-status_changed_at")[:RECENT_ERRORS]
    ]
    entries = list(AuditEntry.objects.filter(result=AuditEntry.Result.ERROR).order_by("-at")[:RECENT_ERRORS])
    ended = [
        (
            e.at,
            e.app_name,
            f"{action_label(e.action)}: {outcomes_text(e)}",
            e.error,
            reverse("admin:apps_registry_auditentry_change", args=[e.pk]),
        )
        for e in entries
    ]
    rows = sorted(now + ended, key=lambda row: row[0], reverse=True)[:RECENT_ERRORS]
    apps = _app_urls([row[1] for row in rows])
    return [Problem(at, app, apps.get(app, ""), what, error, url) for at, app, what, error, url in rows]


def recent_entries() -> list[tuple[AuditEntry, str, str]]:
    entries = AuditEntry.objects.select_related("user")[:RECENT_ENTRIES]
    return [(e, action_label(e.action), reverse("admin:apps_registry_auditentry_change", args=[e.pk])) for e in entries]


def context(request: HttpRequest) -> dict:
    user = request.user
    found: dict = {}
    statuses = environment_statuses()
    if user.has_perm("apps_registry.view_environment"):
        found["appsup_environments"] = environments_by_status(statuses)
        found["appsup_environment_total"] = sum(c.count for c in found["appsup_environments"])
    if user.has_perm("apps_registry.view_application"):
        found["appsup_apps"], found["appsup_app_total"] = apps_by_status(statuses)
        found["appsup_errors"] = recent_errors()
        found["appsup_queue_depth"], found["appsup_queue_jobs"] = start_queue()
        found["appsup_apps_url"] = reverse(APPS)
    if user.has_perm("apps_registry.view_auditentry"):
        found["appsup_recent"] = recent_entries()
        found["appsup_audit_url"] = reverse("admin:apps_registry_auditentry_changelist")
    return found


def index(request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
    """``admin.site.index`` with the dashboard's figures (set below, before the URLs are built)."""
    apply_worker_events()  # the statuses counted are the workers' latest
    return AdminSite.index(admin.site, request, {**context(request), **(extra_context or {})})


admin.site.index_template = "admin/apps_registry/dashboard.html"
admin.site.index = index
