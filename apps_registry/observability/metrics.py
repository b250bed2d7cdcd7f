"""Prometheus metrics that other modules observe (the scrape itself is ``exposition``).

- process-local histograms (proxy requests, hosted requests, command round trips) that the
  proxy, a worker's hosting middleware, the start queue and the agent observe through
  ``observe_proxy_request`` / ``observe_hosted_request`` / ``observe_command_round_trip``.
  Under gunicorn with several workers (plus the RQ worker beside it) each process counts its
  own; set ``PROMETHEUS_MULTIPROC_DIR`` to a directory emptied at start (the local cluster
  and the container entrypoint do) and a scrape sums every process.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, disable_created_metrics

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

# Requests a worker's hosted apps answered, by app and status class: the figures of
# apps_registry.control.app_figures for Prometheus (which computes rates and quantiles itself).
HOSTED_REQUEST_SECONDS = Histogram(
    "hosted_request_duration_seconds",
    "Time a hosted app took to answer a request on this worker environment",
    ["app", "status_class"],
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

# Worker events the ingest refused (e.g. "future": timed beyond the Redis server's clock).
EVENTS_REFUSED = Counter(
    "events_refused",
    "Worker events refused by the supervisor's ingest, by reason",
    ["reason"],
    namespace=NAMESPACE,
)


def status_class(status: int) -> str:
    """200 -> "2xx"; anything odd -> "other", so label values stay few."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


def observe_proxy_request(app: str, environment: str, status: int, seconds: float) -> None:
    PROXY_REQUEST_SECONDS.labels(app=app, environment=environment, status_class=status_class(status)).observe(seconds)


def observe_hosted_request(app: str, status: int, seconds: float) -> None:
    HOSTED_REQUEST_SECONDS.labels(app=app, status_class=status_class(status)).observe(seconds)


def observe_command_round_trip(action: str, environment: str, result: str, seconds: float) -> None:
    """``result`` is the ack's result (ok, error, expired, superseded) or ``timeout``."""
    COMMAND_ROUND_TRIP_SECONDS.labels(action=action, environment=environment, result=result).observe(seconds)


def count_refused_event(reason: str) -> None:
    EVENTS_REFUSED.labels(reason=reason).inc()
