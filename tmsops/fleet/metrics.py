"""The Prometheus metrics the fleet exports on its control API's ``/metrics``, per service.

The names here are the contract with :mod:`tmsops.metrics_source`'s fleet PromQL templates.
The per-route metrics (``route`` label) are separate series, so the per-service ones keep
their labels; a route is the request's method and path with id-like segments replaced by
``{id}`` and the query string dropped (:func:`normalise_route`), and each service keeps at
most :data:`MAX_ROUTES` distinct routes (the rest count as ``other``) so cardinality stays bounded.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import urlsplit

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
ROUTE_REQUESTS = "tmsops_proxy_route_requests"  # counter, labels service, route, code
ROUTE_DURATION = "tmsops_proxy_route_request_duration_seconds"  # histogram, labels service, route
CLIENT_CONNECTIONS = "tmsops_proxy_client_connections"  # counter, label service: connections clients opened
UPSTREAM_CONNECTIONS = "tmsops_proxy_upstream_connections"  # counter, label service: connections to replicas

MAX_ROUTES = 50
OTHER_ROUTE = "other"
ID_SEGMENT = "{id}"
MAX_PATH_CHARS = 200
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})
_ID_LIKE = re.compile(
    r"[0-9]+"  # a number
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # a UUID
    r"|(?=[a-fA-F]*[0-9])[0-9a-fA-F]{16,}"  # long hex with a digit (object ids, hashes)
)

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
        self.route_requests = Counter(
            ROUTE_REQUESTS, "Requests through the proxy per route", ["service", "route", "code"], registry=registry
        )
        self.route_duration = Histogram(
            ROUTE_DURATION,
            "Request latency at the proxy per route",
            ["service", "route"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.client_connections = Counter(
            CLIENT_CONNECTIONS, "Connections clients opened to the proxy", ["service"], registry=registry
        )
        self.upstream_connections = Counter(
            UPSTREAM_CONNECTIONS, "Connections the proxy opened to replicas", ["service"], registry=registry
        )


def normalise_route(method: str, target: str) -> str:
    """``GET /shipments/42?full=1`` -> ``GET /shipments/{id}``: numbers, UUIDs and long hex become ``{id}``.

    An absolute-form target keeps only its path; an unknown method becomes ``OTHER``; the
    path is cut at :data:`MAX_PATH_CHARS`.
    """
    verb = method.upper() if method.upper() in METHODS else "OTHER"
    if target == "*":
        return f"{verb} *"
    path = urlsplit(target).path if "://" in target else target.split("?", 1)[0].split("#", 1)[0]
    return f"{verb} {_normalise_path(path[: 2 * MAX_PATH_CHARS])}"


@functools.lru_cache(maxsize=4096)
def _normalise_path(path: str) -> str:
    segments = (ID_SEGMENT if _ID_LIKE.fullmatch(segment) else segment for segment in path.split("/"))
    return "/".join(segments)[:MAX_PATH_CHARS] or "/"


class RouteLabels:
    """The route label of each request of one service: the first ``limit`` distinct routes, then ``other``."""

    def __init__(self, limit: int = MAX_ROUTES) -> None:
        self.limit = limit
        self._known: set[str] = set()

    def label(self, method: bytes | str, target: bytes | str) -> str:
        route = normalise_route(_text(method), _text(target))
        if route in self._known:
            return route
        if len(self._known) >= self.limit:
            return OTHER_ROUTE
        self._known.add(route)
        return route

    @property
    def known(self) -> frozenset[str]:
        return frozenset(self._known)


def _text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value
