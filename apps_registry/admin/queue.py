"""The start queue's RQ dashboard (django-rq's, under ``/admin/django_rq/dashboard/``), for users
with django-rq's own "Access admin page" permission only.

django-rq lets every staff user in: its views check ``is_staff`` alone, and they can empty the
queue and delete or requeue jobs, which leaves starts interrupted. Every one of its pages here
answers 403 without the permission (superusers have it), and every change made from it (a POST)
is in the audit trail as ``queue_dashboard_change`` with the page it was made on.
"""

from __future__ import annotations

from functools import wraps

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.urls import NoReverseMatch, URLPattern, reverse
from django_rq.admin import QueueAdmin
from django_rq.models import Dashboard

from apps_registry.control import redis_client
from apps_registry.control.start_queue import enqueue
from apps_registry.registry import actions

QUEUE_PERMISSION = "django_rq.admin"
# Its one admin entry is the queue dashboard: named so in the sidebar, not "Django-RQ".
Dashboard._meta.verbose_name = Dashboard._meta.verbose_name_plural = "Queue dashboard"


def _guarded(view):
    @wraps(view)
    def guarded(request: HttpRequest, *args, **kwargs):
        if kwargs.get("token"):  # stats.json/<token>: the view checks django-rq's API token itself
            return view(request, *args, **kwargs)
        if not request.user.has_perm(QUEUE_PERMISSION):
            raise PermissionDenied("the start queue's dashboard needs the django_rq 'Access admin page' permission")
        response = view(request, *args, **kwargs)
        # What a POST here does (empty a queue, delete, requeue or enqueue jobs, stop workers)
        # can leave starts interrupted: the audit trail names who did it, and where.
        if request.method == "POST" and response.status_code < 400:
            actions.audit("queue_dashboard_change", user=request.user, error=request.path[:500], via="admin")
        return response

    return guarded


class StartQueueAdmin(QueueAdmin):
    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(QUEUE_PERMISSION)

    def has_view_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.user.has_perm(QUEUE_PERMISSION)

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.user.has_perm(QUEUE_PERMISSION)

    def get_urls(self) -> list:
        urls = super().get_urls()
        for pattern in urls:
            if isinstance(pattern, URLPattern):
                pattern.callback = _guarded(pattern.callback)
        return urls


if admin.site.is_registered(Dashboard):
    admin.site.unregister(Dashboard)
admin.site.register(Dashboard, StartQueueAdmin)


QUEUE_SCAN = 200  # jobs looked at to find a request's own: the queue is short (one job per start)


def job_of_request(request_id: str) -> tuple[int, str, str] | None:
    """Where a start request waits in the queue: ``(position, job id, job page URL)``, or None
    (not waiting, or the queue cannot be read). The way back from an audit entry to its job."""
    if not request_id or not redis_client.configured():
        return None
    try:
        jobs = enqueue.get_queue().get_jobs(0, QUEUE_SCAN)
    except Exception:  # the entry's page still renders
        return None
    for position, job in enumerate(jobs, start=1):
        if job.kwargs.get("request_id") == request_id:
            return position, job.id, job_url(job.id)
    return None


def job_url(job_id: str) -> str:
    """The start job's page in django-rq's dashboard ('' when it has no route here)."""
    try:
        index = list(settings.RQ_QUEUES).index(enqueue.QUEUE_NAME)
        return reverse("admin:django_rq_job_detail", args=[index, job_id])
    except (ValueError, NoReverseMatch):
        return ""
