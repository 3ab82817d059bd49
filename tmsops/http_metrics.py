"""Prometheus metrics of a service's HTTP traffic, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

UNMATCHED_ROUTE = "<unmatched>"
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HttpMetrics:
    """Requests by route template, method and status, and their latency."""

    def __init__(self, service: str, version: str) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "tmsops_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "tmsops_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        info = Gauge("tmsops_service_info", "Service name and version", ["service", "version"], registry=self.registry)
        info.labels(service=service, version=version).set(1)
        self.extra_registries: list[CollectorRegistry] = []

    def observe(self, route: str | None, method: str, status: int, duration_s: float) -> None:
        template = route or UNMATCHED_ROUTE
        self._requests.labels(route=template, method=method, status=str(status)).inc()
        self._latency.labels(route=template, method=method).observe(duration_s)

    def include(self, registry: CollectorRegistry) -> None:
        """Expose the metrics of ``registry`` too (a service's own metrics beside its HTTP metrics)."""
        self.extra_registries.append(registry)

    def exposition(self) -> bytes:
        return b"".join(generate_latest(registry) for registry in [self.registry, *self.extra_registries])
