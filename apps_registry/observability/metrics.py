"""Prometheus metrics: histograms other modules observe, and registry state read at scrape time.

Two kinds of numbers live here:

- process-local histograms (proxy requests, command round trips) that the proxy, the start
  queue and the agent observe through ``observe_proxy_request`` / ``observe_command_round_trip``.
  Under gunicorn with several workers (plus the RQ worker beside it) each process counts its
  own; set ``PROMETHEUS_MULTIPROC_DIR`` to a directory emptied at start (the local cluster
  and the container entrypoint do) and a scrape sums every process.
- gauges computed from the registry and Redis when ``/metrics`` is scraped (environments by
  status, apps by status per environment, start-queue length and oldest wait, heartbeat age).
  Computing them per scrape keeps them exact without a background sweeper; it costs a handful
  of queries, and only on the supervisor and standalone roles.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

log = logging.getLogger(__name__)

NAMESPACE = "appsup"
# "_created" series double the output and no dashboard here uses them.
disable_created_metrics()

# Proxied requests through the supervisor to a worker, by app and status class (2xx, 5xx...).
PROXY_REQUEST_SECONDS = Histogram(
    "proxy_request_duration_seconds",
    "Time to answer a request proxied to a worker environment",
    ["app", "environment", "status_class"],
    namespace=NAMESPACE,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

# From sending a command to a worker to receiving its acknowledgement.
COMMAND_ROUND_TRIP_SECONDS = Histogram(
    "command_round_trip_seconds",
    "Time from sending a command to a worker environment until its acknowledgement",
    ["action", "environment", "result"],
    namespace=NAMESPACE,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)


def status_class(status: int) -> str:
    """200 -> "2xx"; anything odd -> "other", so label values stay few."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


def observe_proxy_request(app: str, environment: str, status: int, seconds: float) -> None:
    PROXY_REQUEST_SECONDS.labels(app=app, environment=environment, status_class=status_class(status)).observe(seconds)


def observe_command_round_trip(action: str, environment: str, result: str, seconds: float) -> None:
    """``result`` is the ack's result (ok, error, expired, superseded) or ``timeout``."""
    COMMAND_ROUND_TRIP_SECONDS.labels(action=action, environment=environment, result=result).observe(seconds)


class RegistryCollector:
    """Gauges read from the supervisor's registry and Redis at scrape time."""

    def collect(self) -> Iterator[Metric]:
        from django.conf import settings

        if settings.APP_MODE == "worker":
            yield from self._worker()
            return
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

    def _worker(self) -> Iterator[Metric]:
        """This environment's apps, from the runtime state file its agent writes."""
        from collections import Counter

        from django.conf import settings

        from worker_agent.hosting import local_state

        try:
            apps = local_state.read_apps()
        except Exception as error:
            log.warning("metrics: runtime state unavailable: %s", error)
            return
        counts = Counter(str(entry.get("status", "")) for entry in apps.values())
        hosted = GaugeMetricFamily(f"{NAMESPACE}_hosted_apps", "Apps this worker environment is serving")
        hosted.add_metric([], counts.get("running", 0))
        yield hosted
        environment = settings.APP_CONFIG.environment_name
        local = GaugeMetricFamily(
            f"{NAMESPACE}_local_apps", "Apps on this environment by local status", labels=["environment", "status"]
        )
        for status in local_state.STATUSES:
            local.add_metric([environment, status], counts.get(status, 0))
        yield local


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


_registry_collector = CollectorRegistry(auto_describe=False)
_registry_collector.register(RegistryCollector())


def render() -> tuple[bytes, str]:
    """The whole exposition for one scrape: process metrics (summed over processes in
    multiprocess mode) followed by registry state."""
    started = time.perf_counter()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        processes = CollectorRegistry()
        multiprocess.MultiProcessCollector(processes)
        body = generate_latest(processes)
    else:
        body = generate_latest(REGISTRY)
    body += generate_latest(_registry_collector)
    body += (
        f"# HELP {NAMESPACE}_scrape_duration_seconds Time spent building this scrape\n"
        f"# TYPE {NAMESPACE}_scrape_duration_seconds gauge\n"
        f"{NAMESPACE}_scrape_duration_seconds {time.perf_counter() - started:.6f}\n"
    ).encode()
    return body, CONTENT_TYPE_LATEST
