"""django-rq under the name operators know it by: its admin section reads "Start queue", not
the raw "DJANGO_RQ" (its one page is the queue dashboard, linked from our dashboard too)."""

from __future__ import annotations

from django_rq.apps import DjangoRqAdminConfig


class StartQueueConfig(DjangoRqAdminConfig):
    verbose_name = "Start queue"
