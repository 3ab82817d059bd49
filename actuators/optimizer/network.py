"""Network analysis of one service: per-route latency and errors, hot spots, and what to change.

The numbers come from Prometheus histograms and counters with a ``route`` label (the fleet's
proxy exports ``tmsops_proxy_route_request_duration_seconds`` and ``tmsops_proxy_route_requests``,
see :mod:`tmsops.fleet.metrics`; :class:`NetworkQueries` names other metrics). Per route:
p50/p95/p99 (``histogram_quantile`` over ``rate``, so as fine as the buckets), requests/s, the
mean latency and the error rate (5xx answers and connection resets over all requests).

:func:`analyse_network` is a pure function of those numbers:

- hot spots: the routes ranked by their share of the total time spent serving
  (requests/s x mean latency), and the routes whose p95 is ``slow_factor`` times the service's;
- timeouts: a client timeout of about p99 x ``timeout_multiplier`` (2-3), rounded up, within
  ``timeout_floor_ms`` .. ``timeout_cap_ms``; a route that the service's timeout would cut gets
  its own; retries only for idempotent methods, within a retry budget, and not on routes whose
  error rate exceeds that budget (retries would not mask the errors, only add load);
- connection reuse, only where the counters show it: new client connections (or new
  connections to replicas) per request, with the pool size the observed concurrency needs;
- error-prone routes: an error rate at or above ``error_rate_threshold``.

:func:`network_report` fetches the numbers from a :class:`PrometheusSource` and analyses them.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from actuators.optimizer.models import CamelModel
from tmsops.fleet import metrics as fleet
from tmsops.metrics_source import PrometheusSource, Sample
from tmsops.promql import escape_string, render_window

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
QUANTILES = {"p50_ms": 0.5, "p95_ms": 0.95, "p99_ms": 0.99}

AdviceKind = Literal["timeout", "retries", "connection_reuse", "error_prone"]


class RouteMetrics(CamelModel):
    """The fetched numbers of one route over the window; latency None where there was no traffic."""

    route: str
    requests_per_second: float
    errors_per_second: float = 0.0
    mean_ms: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None


class NetworkMetrics(CamelModel):
    """The fetched numbers of one service over ``window``; connection and in-flight numbers are None
    where the metrics do not exist (Kubernetes without the fleet's proxy)."""

    service: str
    window: str
    routes: list[RouteMetrics]
    p95_ms: float | None = None
    p99_ms: float | None = None
    client_connections_per_second: float | None = None
    upstream_connections_per_second: float | None = None
    max_in_flight: float | None = None


class RouteReport(CamelModel):
    route: str
    requests_per_second: float
    error_rate: float | None
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    time_share: float
    timeout_ms: float | None


class HotSpot(CamelModel):
    route: str
    time_share: float
    p95_ms: float | None
    why: str


class Advice(CamelModel):
    """One recommendation; ``value`` is a timeout in ms (``timeout``), a share of requests (``retries``:
    the budget or a route's error rate; ``connection_reuse``: new connections per request;
    ``error_prone``: the error rate)."""

    kind: AdviceKind
    route: str | None = None
    message: str
    value: float | None = None


class NetworkReport(CamelModel):
    service: str
    window: str
    requests_per_second: float
    error_rate: float | None
    p95_ms: float | None
    p99_ms: float | None
    timeout_ms: float | None
    routes: list[RouteReport]
    hot_spots: list[HotSpot]
    advice: list[Advice]
    notes: list[str]


@dataclass(frozen=True)
class NetworkPolicy:
    timeout_multiplier: float = 2.5
    timeout_floor_ms: float = 50.0
    timeout_cap_ms: float = 30_000.0
    slow_factor: float = 2.0
    min_route_rps: float = 0.05
    error_rate_threshold: float = 0.01
    retry_budget: float = 0.1
    reuse_threshold: float = 0.5
    hot_spots: int = 5
    min_time_share: float = 0.05


@dataclass(frozen=True)
class NetworkQueries:
    """Which metrics hold the per-route numbers (the fleet proxy's by default); durations in seconds."""

    duration: str = fleet.ROUTE_DURATION
    requests: str = f"{fleet.ROUTE_REQUESTS}_total"
    error_codes: str = "5..|reset"
    client_connections: str | None = f"{fleet.CLIENT_CONNECTIONS}_total"
    upstream_connections: str | None = f"{fleet.UPSTREAM_CONNECTIONS}_total"
    in_flight: str | None = fleet.IN_FLIGHT

    def render(self, service: str, window: str) -> dict[str, str]:
        """Every query for ``service`` over ``window`` (a PromQL duration), by name."""
        match = f'service="{escape_string(service)}"'
        buckets = f"rate({self.duration}_bucket{{{match}}}[{window}])"
        requests = f"rate({self.requests}{{{match}}}[{window}])"
        errors = f'rate({self.requests}{{{match},code=~"{self.error_codes}"}}[{window}])'
        queries = {
            "requests_per_second": f"sum by (route) ({requests})",
            "errors_per_second": f"sum by (route) ({errors})",
            "mean_ms": (
                f"1000 * sum by (route) (rate({self.duration}_sum{{{match}}}[{window}]))"
                f" / sum by (route) (rate({self.duration}_count{{{match}}}[{window}]))"
            ),
            **{
                name: f"1000 * histogram_quantile({q}, sum by (route, le) ({buckets}))" for name, q in QUANTILES.items()
            },
            "service_p95_ms": f"1000 * histogram_quantile(0.95, sum by (le) ({buckets}))",
            "service_p99_ms": f"1000 * histogram_quantile(0.99, sum by (le) ({buckets}))",
        }
        if self.client_connections:
            queries["client_connections"] = f"sum(rate({self.client_connections}{{{match}}}[{window}]))"
        if self.upstream_connections:
            queries["upstream_connections"] = f"sum(rate({self.upstream_connections}{{{match}}}[{window}]))"
        if self.in_flight:
            queries["max_in_flight"] = f"sum(max_over_time({self.in_flight}{{{match}}}[{window}]))"
        return queries


def method_of(route: str) -> str:
    """``GET /shipments/{id}`` -> ``GET``; ``other`` -> ``""``."""
    method, _, path = route.partition(" ")
    return method if path else ""


def time_shares(routes: Sequence[RouteMetrics]) -> dict[str, float]:
    """Each route's share of the total time spent serving: requests/s x mean latency, over the sum."""
    spent = {route.route: route.requests_per_second * (route.mean_ms or 0.0) for route in routes}
    total = sum(spent.values())
    return {name: (value / total if total > 0 else 0.0) for name, value in spent.items()}


def client_timeout_ms(p99_ms: float | None, policy: NetworkPolicy) -> float | None:
    """p99 x the multiplier, rounded up (10 ms under 1 s, 100 ms under 10 s, then 1 s), floored and capped."""
    if p99_ms is None or not math.isfinite(p99_ms):
        return None
    wanted = p99_ms * policy.timeout_multiplier
    step = 10.0 if wanted < 1000 else 100.0 if wanted < 10_000 else 1000.0
    return min(policy.timeout_cap_ms, max(policy.timeout_floor_ms, math.ceil(round(wanted / step, 6)) * step))


def hot_spots(routes: Sequence[RouteMetrics], service_p95_ms: float | None, policy: NetworkPolicy) -> list[HotSpot]:
    """The routes taking the largest shares of serving time, then the routes much slower than the service."""
    shares = time_shares(routes)
    found: dict[str, HotSpot] = {}
    ranked = sorted(routes, key=lambda route: shares[route.route], reverse=True)
    for route in ranked[: policy.hot_spots]:
        share = shares[route.route]
        if share >= policy.min_time_share:
            why = (
                f"{share:.0%} of the time spent serving ({route.requests_per_second:.3g} req/s x {_ms(route.mean_ms)})"
            )
            found[route.route] = HotSpot(route=route.route, time_share=share, p95_ms=route.p95_ms, why=why)
    for route in routes:
        if _slow(route, service_p95_ms, policy):
            assert route.p95_ms is not None and service_p95_ms is not None
            why = f"p95 {_ms(route.p95_ms)} is {route.p95_ms / service_p95_ms:.1f}x the service's {_ms(service_p95_ms)}"
            spot = found.get(route.route)
            text = f"{spot.why}; {why}" if spot else why
            found[route.route] = HotSpot(
                route=route.route, time_share=shares[route.route], p95_ms=route.p95_ms, why=text
            )
    return sorted(found.values(), key=lambda spot: spot.time_share, reverse=True)


def error_rate(route: RouteMetrics) -> float | None:
    if route.requests_per_second <= 0:
        return None
    return min(1.0, route.errors_per_second / route.requests_per_second)


def analyse_network(metrics: NetworkMetrics, policy: NetworkPolicy | None = None) -> NetworkReport:
    """Per-route report, hot spots and advice from the fetched numbers; a pure function."""
    policy = policy or NetworkPolicy()
    shares = time_shares(metrics.routes)
    timeout = client_timeout_ms(metrics.p99_ms, policy)
    routes = [_route_report(route, shares[route.route], timeout, policy) for route in metrics.routes]
    routes.sort(key=lambda report: report.time_share, reverse=True)
    total_rps = sum(route.requests_per_second for route in metrics.routes)
    total_errors = sum(route.errors_per_second for route in metrics.routes)
    notes = []
    if not metrics.routes or total_rps <= 0:
        notes.append(f"no requests to {metrics.service} in the last {metrics.window}: nothing to analyse")
    if any(route.route == fleet.OTHER_ROUTE for route in metrics.routes):
        notes.append(f"more than {fleet.MAX_ROUTES} distinct routes: the rest are counted together as 'other'")
    advice = [
        *_timeout_advice(metrics, routes, timeout, policy),
        *_retry_advice(routes, policy),
        *_connection_advice(metrics, total_rps, policy, notes),
        *_error_advice(routes, policy),
    ]
    return NetworkReport(
        service=metrics.service,
        window=metrics.window,
        requests_per_second=total_rps,
        error_rate=min(1.0, total_errors / total_rps) if total_rps > 0 else None,
        p95_ms=metrics.p95_ms,
        p99_ms=metrics.p99_ms,
        timeout_ms=timeout,
        routes=routes,
        hot_spots=hot_spots(metrics.routes, metrics.p95_ms, policy),
        advice=advice,
        notes=notes,
    )


async def fetch_network_metrics(
    source: PrometheusSource, service: str, *, window: timedelta | None = None, queries: NetworkQueries | None = None
) -> NetworkMetrics:
    """The per-route numbers of ``service`` over ``window`` (the source's metrics window by default)."""
    duration = render_window(window) if window is not None else source.templates.window_text
    rendered = (queries or NetworkQueries()).render(service, duration)
    names = list(rendered)
    answers = await asyncio.gather(*(source.query(rendered[name]) for name in names))
    found = dict(zip(names, answers, strict=True))
    per_route = {
        name: _by_route(found[name]) for name in ("requests_per_second", "errors_per_second", "mean_ms", *QUANTILES)
    }
    routes = [
        RouteMetrics(
            route=route,
            requests_per_second=rate,
            errors_per_second=per_route["errors_per_second"].get(route) or 0.0,
            **{name: per_route[name].get(route) for name in ("mean_ms", *QUANTILES)},
        )
        for route, rate in per_route["requests_per_second"].items()
        if rate is not None and rate > 0
    ]
    return NetworkMetrics(
        service=service,
        window=duration,
        routes=sorted(routes, key=lambda route: route.route),
        p95_ms=_scalar(found.get("service_p95_ms")),
        p99_ms=_scalar(found.get("service_p99_ms")),
        client_connections_per_second=_scalar(found.get("client_connections")),
        upstream_connections_per_second=_scalar(found.get("upstream_connections")),
        max_in_flight=_scalar(found.get("max_in_flight")),
    )


async def network_report(
    source: PrometheusSource,
    service: str,
    *,
    window: timedelta | None = None,
    policy: NetworkPolicy | None = None,
    queries: NetworkQueries | None = None,
) -> NetworkReport:
    """Fetch ``service``'s numbers from Prometheus and analyse them.

    Raises MetricsUnavailable (temporary) when Prometheus is down, QueryError or
    MetricsResponseError (permanent) when it refuses a query or is not Prometheus.
    """
    return analyse_network(await fetch_network_metrics(source, service, window=window, queries=queries), policy)


def _route_report(route: RouteMetrics, share: float, timeout: float | None, policy: NetworkPolicy) -> RouteReport:
    own = client_timeout_ms(route.p99_ms, policy)
    return RouteReport(
        route=route.route,
        requests_per_second=route.requests_per_second,
        error_rate=error_rate(route),
        mean_ms=route.mean_ms,
        p50_ms=route.p50_ms,
        p95_ms=route.p95_ms,
        p99_ms=route.p99_ms,
        time_share=share,
        timeout_ms=max(own, timeout) if own is not None and timeout is not None else own or timeout,
    )


def _timeout_advice(
    metrics: NetworkMetrics, routes: Sequence[RouteReport], timeout: float | None, policy: NetworkPolicy
) -> list[Advice]:
    if timeout is None or metrics.p99_ms is None:
        return []
    capped = " (capped)" if timeout >= policy.timeout_cap_ms else ""
    advice = [
        Advice(
            kind="timeout",
            message=(
                f"Client timeout for {metrics.service}: {_ms(timeout)}{capped}, about "
                f"{policy.timeout_multiplier:g} x its p99 {_ms(metrics.p99_ms)}; a caller waiting longer only holds a "
                "connection and a worker."
            ),
            value=timeout,
        )
    ]
    for route in routes:
        if route.p99_ms is not None and route.p99_ms >= timeout and route.requests_per_second >= policy.min_route_rps:
            advice.append(
                Advice(
                    kind="timeout",
                    route=route.route,
                    message=(
                        f"{route.route}: its p99 {_ms(route.p99_ms)} is at or above the service's timeout: give it its "
                        f"own timeout of {_ms(route.timeout_ms)}, or the timeout cuts its slowest 1%."
                    ),
                    value=route.timeout_ms,
                )
            )
    return advice


def _retry_advice(routes: Sequence[RouteReport], policy: NetworkPolicy) -> list[Advice]:
    busy = [route for route in routes if route.requests_per_second >= policy.min_route_rps]
    if not busy:
        return []
    retryable = [route.route for route in busy if method_of(route.route) in IDEMPOTENT_METHODS]
    others = [route.route for route in busy if method_of(route.route) not in IDEMPOTENT_METHODS]
    parts = [f"Retry budget: retries at most {policy.retry_budget:.0%} of requests, one retry with jittered backoff"]
    if retryable:
        parts.append(f"on idempotent routes only ({', '.join(retryable)})")
    if others:
        parts.append(f"no automatic retry of {', '.join(others)} unless requests carry an idempotency key")
    advice = [Advice(kind="retries", message="; ".join(parts) + ".", value=policy.retry_budget)]
    for route in busy:
        if route.error_rate is not None and route.error_rate > policy.retry_budget:
            message = (
                f"{route.route}: {route.error_rate:.0%} of requests fail, above the {policy.retry_budget:.0%} retry "
                "budget: retries would not mask it and would add load; fix the route first."
            )
            advice.append(Advice(kind="retries", route=route.route, message=message, value=route.error_rate))
    return advice


def _connection_advice(
    metrics: NetworkMetrics, total_rps: float, policy: NetworkPolicy, notes: list[str]
) -> list[Advice]:
    if metrics.client_connections_per_second is None and metrics.upstream_connections_per_second is None:
        notes.append("no connection counters for this service: connection reuse not assessed")
        return []
    if total_rps < policy.min_route_rps:
        return []
    pool = (
        f" A pool of {math.ceil(metrics.max_in_flight)} connections covers the most requests seen in flight."
        if metrics.max_in_flight
        else ""
    )
    advice = []
    client = (metrics.client_connections_per_second or 0.0) / total_rps
    if client >= policy.reuse_threshold:
        message = (
            f"Clients of {metrics.service} open a new connection for {min(client, 1.0):.0%} of requests: use one "
            f"long-lived client with HTTP keep-alive (a connection pool) so requests skip the TCP (and TLS) handshake."
            f"{pool}"
        )
        advice.append(Advice(kind="connection_reuse", message=message, value=client))
    upstream = (metrics.upstream_connections_per_second or 0.0) / total_rps
    if upstream >= policy.reuse_threshold:
        message = (
            f"The proxy opens a new connection to {metrics.service}'s replicas for {min(upstream, 1.0):.0%} of "
            "requests: the replicas close connections after answering; enable keep-alive on them (and an idle "
            "timeout longer than the proxy's)."
        )
        advice.append(Advice(kind="connection_reuse", message=message, value=upstream))
    return advice


def _error_advice(routes: Sequence[RouteReport], policy: NetworkPolicy) -> list[Advice]:
    flagged = [
        route
        for route in routes
        if route.error_rate is not None
        and route.error_rate >= policy.error_rate_threshold
        and route.requests_per_second >= policy.min_route_rps
    ]
    flagged.sort(key=lambda route: route.error_rate or 0.0, reverse=True)
    return [
        Advice(
            kind="error_prone",
            route=route.route,
            message=(
                f"{route.route}: {route.error_rate:.1%} of {route.requests_per_second:.3g} req/s fail "
                "(5xx or connection reset): look at its errors before tuning anything else."
            ),
            value=route.error_rate,
        )
        for route in flagged
    ]


def _slow(route: RouteMetrics, service_p95_ms: float | None, policy: NetworkPolicy) -> bool:
    return (
        route.p95_ms is not None
        and service_p95_ms is not None
        and service_p95_ms > 0
        and route.requests_per_second >= policy.min_route_rps
        and route.p95_ms >= policy.slow_factor * service_p95_ms
    )


def _by_route(samples: Sequence[Sample]) -> dict[str, float | None]:
    return {sample.labels.get("route", ""): _finite(sample.value) for sample in samples}


def _scalar(samples: Sequence[Sample] | None) -> float | None:
    return _finite(samples[0].value) if samples else None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"
