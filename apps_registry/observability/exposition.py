"""The ``/metrics`` scrape: this process's histograms (summed over processes in multiprocess
mode) followed by state read at scrape time.

On the supervisor and standalone roles, gauges computed from the registry and Redis when
``/metrics`` is scraped (environments by status, apps by status per environment, start-queue
length and oldest wait, heartbeat age): computing them per scrape keeps them exact without a
background sweeper, for a handful of queries. A worker adds its own collector (its hosted apps).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from apps_registry.observability.metrics import NAMESPACE

log = logging.getLogger(__name__)


class RegistryCollector:
    """Gauges read from the supervisor's registry and Redis at scrape time."""

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._registry()
        except Exception as error:  # a scrape must not fail because one source is down
            log.warning("metrics: registry state unavailable: %s", error)

    def _registry(self) -> Iterator[Metric]:
        from django.db.models import Count, Min
        from django.utils import timezone

        from apps_registry.models import AppEnvironment, AppStatus, Environment, EnvironmentStatus

        envs = list(Environment.objects.all())
        statuses = _environment_statuses(envs)
        by_status = GaugeMetricFamily(f"{NAMESPACE}_environments", "Worker environments by status", labels=["status"])
        counts = {status: 0 for status in EnvironmentStatus.values}
        for status, _seen in statuses.values():
            counts[status] = counts.get(status, 0) + 1
        for status, number in sorted(counts.items()):
            by_status.add_metric([status], number)
        yield by_status

        env_up = GaugeMetricFamily(
            f"{NAMESPACE}_environment_status",
            "1 for the environment's current status (online, unknown, offline, stopped)",
            labels=["environment", "status"],
        )
        age = GaugeMetricFamily(
            f"{NAMESPACE}_environment_heartbeat_age_seconds",
            "Seconds since the environment's agent was last seen",
            labels=["environment"],
        )
        now = timezone.now()
        for env in envs:
            status, seen = statuses.get(env.name, (EnvironmentStatus.UNKNOWN, None))
            env_up.add_metric([env.name, status], 1)
            if seen is not None:
                age.add_metric([env.name], max(0.0, (now - seen).total_seconds()))
        yield env_up
        yield age

        apps = GaugeMetricFamily(
            f"{NAMESPACE}_apps", "Applications by status on each environment", labels=["environment", "status"]
        )
        rows = AppEnvironment.objects.values_list("environment__name", "status").annotate(n=Count("id"))
        seen_pairs = {(env, status): n for env, status, n in rows}
        for env in envs:
            for status in AppStatus.values:
                apps.add_metric([env.name, status], seen_pairs.get((env.name, status), 0))
        yield apps

        queued = AppEnvironment.objects.filter(status=AppStatus.QUEUED).aggregate(
            n=Count("id"), oldest=Min("queued_at")
        )
        waiting = GaugeMetricFamily(
            f"{NAMESPACE}_start_queue_waiting", "App placements queued for a start and not yet begun"
        )
        waiting.add_metric([], queued["n"])
        yield waiting
        oldest = GaugeMetricFamily(
            f"{NAMESPACE}_start_queue_oldest_wait_seconds", "How long the oldest queued start has waited (0 if none)"
        )
        oldest.add_metric([], (now - queued["oldest"]).total_seconds() if queued["oldest"] else 0.0)
        yield oldest

        jobs = _queue_jobs()
        if jobs is not None:
            length = GaugeMetricFamily(f"{NAMESPACE}_start_queue_jobs", "Jobs waiting in the app_starts RQ queue")
            length.add_metric([], jobs)
            yield length
        yield from _backups()


def _backups() -> Iterator[Metric]:
    """Per app: its last successful backup, its last verified restore (a drill), and 1 where
    its newest backup is not proven restorable (failed, failed its drill, never drilled)."""
    from apps_registry.control.backups import health
    from apps_registry.models import Application

    states = health.of_apps(list(Application.objects.values_list("name", flat=True)))
    success = GaugeMetricFamily(
        f"{NAMESPACE}_backup_last_success_timestamp_seconds",
        "When the app's newest successful backup was taken (Unix time; absent: none)",
        labels=["app"],
    )
    verified = GaugeMetricFamily(
        f"{NAMESPACE}_backup_last_verified_restore_timestamp_seconds",
        "When a restore drill last proved one of the app's backups restorable (Unix time; absent: never)",
        labels=["app"],
    )
    unproven = GaugeMetricFamily(
        f"{NAMESPACE}_backup_unproven",
        "1 if the app's newest backup failed, failed its restore drill or was never verified; else 0",
        labels=["app"],
    )
    for name, state in states.items():
        if state.last_success_at:
            success.add_metric([name], state.last_success_at.timestamp())
        if state.last_verified_at:
            verified.add_metric([name], state.last_verified_at.timestamp())
        unproven.add_metric([name], 1 if state.flagged else 0)
    yield success
    yield verified
    yield unproven


def _environment_statuses(envs: list) -> dict[str, tuple[str, object]]:
    from apps_registry.control.liveness import environment_statuses

    return environment_statuses(envs)


def _queue_jobs() -> int | None:
    from django.conf import settings

    if not settings.APP_CONFIG.uses_redis:
        return None
    try:
        import django_rq

        return django_rq.get_queue("app_starts").count
    except Exception as error:
        log.warning("metrics: start queue length unavailable: %s", error)
        return None


_collectors: dict[int, CollectorRegistry] = {}


def _state_registry(collector: object) -> CollectorRegistry:
    """One CollectorRegistry per state collector, built once per process."""
    registry = _collectors.get(id(collector))
    if registry is None:
        registry = _collectors[id(collector)] = CollectorRegistry(auto_describe=False)
        registry.register(collector)
    return registry


REGISTRY_STATE = RegistryCollector()


def render(state: object = REGISTRY_STATE) -> tuple[bytes, str]:
    """The whole exposition for one scrape: process metrics (summed over processes in
    multiprocess mode) followed by the state ``state`` collects (the registry's by default)."""
    started = time.perf_counter()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        processes = CollectorRegistry()
        multiprocess.MultiProcessCollector(processes)
        body = generate_latest(processes)
    else:
        body = generate_latest(REGISTRY)
    body += generate_latest(_state_registry(state))
    body += (
        f"# HELP {NAMESPACE}_scrape_duration_seconds Time spent building this scrape\n"
        f"# TYPE {NAMESPACE}_scrape_duration_seconds gauge\n"
        f"{NAMESPACE}_scrape_duration_seconds {time.perf_counter() - started:.6f}\n"
    ).encode()
    return body, CONTENT_TYPE_LATEST
