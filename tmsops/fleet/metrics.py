"""The Prometheus metrics the fleet exports on its control API's ``/metrics``, per service.

The names here are the contract with :mod:`tmsops.metrics_source`'s fleet PromQL templates.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REQUESTS = "tmsops_proxy_requests"  # counter, labels service, code ("502" when no replica answered)
DURATION = "tmsops_proxy_request_duration_seconds"  # histogram, label service
IN_FLIGHT = "tmsops_proxy_in_flight"  # gauge, label service
REPLICAS = "tmsops_fleet_replicas"  # gauge, label service: desired replicas
READY_REPLICAS = "tmsops_fleet_ready_replicas"  # gauge, label service
CPU_CORES = "tmsops_fleet_cpu_cores"  # gauge, label service: cores used by all replicas (and their faults)
MEMORY_BYTES = "tmsops_fleet_memory_bytes"  # gauge, label service: resident memory of all replicas
CPU_REQUEST = "tmsops_fleet_cpu_request_cores"  # gauge, label service: per-replica request
MEMORY_REQUEST = "tmsops_fleet_memory_request_bytes"  # gauge, label service: per-replica request
RESTARTS = "tmsops_fleet_restarts"  # counter, label service
ACTIVE_FAULTS = "tmsops_fleet_active_faults"  # gauge, labels service, type

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)


class FleetMetrics:
    """The fleet's metrics on their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            REQUESTS, "Requests through the service's proxy", ["service", "code"], registry=registry
        )
        self.duration = Histogram(
            DURATION, "Request latency at the proxy", ["service"], buckets=DURATION_BUCKETS, registry=registry
        )
        self.in_flight = Gauge(IN_FLIGHT, "Requests in flight at the proxy", ["service"], registry=registry)
        self.replicas = Gauge(REPLICAS, "Desired replicas", ["service"], registry=registry)
        self.ready_replicas = Gauge(READY_REPLICAS, "Replicas in the proxy's pool", ["service"], registry=registry)
        self.cpu_cores = Gauge(CPU_CORES, "CPU cores used by the service's replicas", ["service"], registry=registry)
        self.memory_bytes = Gauge(
            MEMORY_BYTES, "Resident memory of the service's replicas", ["service"], registry=registry
        )
        self.cpu_request = Gauge(CPU_REQUEST, "CPU request per replica, cores", ["service"], registry=registry)
        self.memory_request = Gauge(MEMORY_REQUEST, "Memory request per replica, bytes", ["service"], registry=registry)
        self.restarts = Counter(RESTARTS, "Replica restarts after a crash", ["service"], registry=registry)
        self.active_faults = Gauge(ACTIVE_FAULTS, "Faults in effect", ["service", "type"], registry=registry)
