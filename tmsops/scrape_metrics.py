"""Metrics read from a service's state when Prometheus scrapes it (decisions, journals, faults).

Each metric is a function giving a value per label set, called at scrape time: the state
(a loop's last decisions, a journal) stays the one source, with nothing kept beside it. A
function that fails leaves its metric out of that scrape (and says so in the log) rather
than failing ``/metrics``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

Values = Mapping[tuple[str, ...], float]


@dataclass(frozen=True)
class ScrapeMetric:
    """``name`` without ``_total`` for a counter (the exposition adds it)."""

    name: str
    help: str
    labels: tuple[str, ...]
    read: Callable[[], Values]
    kind: Literal["gauge", "counter"] = "gauge"


class ScrapeCollector(Collector):
    def __init__(self, metrics: list[ScrapeMetric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for metric in self._metrics:
            try:
                values = metric.read()
            except Exception as error:  # one line a scrape: a traceback each time would flood the log
                log.warning("metric %s could not be read: %r", metric.name, error)
                continue
            family_type = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
            family = family_type(metric.name, metric.help, labels=list(metric.labels))
            for labels, value in sorted(values.items()):
                family.add_metric(list(labels), value)
            yield family


def scrape_registry(metrics: list[ScrapeMetric]) -> CollectorRegistry:
    """A registry of ``metrics``, for :meth:`tmsops.http_metrics.HttpMetrics.include`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScrapeCollector(metrics))
    return registry
