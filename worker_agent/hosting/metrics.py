"""This worker environment's own gauges for ``/metrics``: the apps it serves, from the runtime
state file its agent writes."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator

from django.conf import settings
from prometheus_client.core import GaugeMetricFamily, Metric

from apps_registry.observability.metrics import NAMESPACE
from worker_agent.hosting import local_state

log = logging.getLogger(__name__)


class HostedAppsCollector:
    def collect(self) -> Iterator[Metric]:
        """This environment's apps, from the runtime state file its agent writes."""
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


HOSTED_APPS = HostedAppsCollector()
