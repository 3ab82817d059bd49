"""Network analysis: route normalisation, the cardinality cap, hot spots, timeouts, retries, reuse, errors."""

from __future__ import annotations

import pytest

from actuators.optimizer.network import (
    NetworkMetrics,
    NetworkPolicy,
    NetworkQueries,
    RouteMetrics,
    analyse_network,
    client_timeout_ms,
    hot_spots,
    time_shares,
)
from tmsops.fleet.metrics import OTHER_ROUTE, RouteLabels, normalise_route

POLICY = NetworkPolicy()


@pytest.mark.parametrize(
    ("method", "target", "route"),
    [
        ("GET", "/shipments/42?full=1", "GET /shipments/{id}"),
        ("get", "/customers/7/shipments/1234", "GET /customers/{id}/shipments/{id}"),
        ("DELETE", "/orders/3f2b8c9e-1a3d-4f6b-9c8d-9e0f1a2b3c4d", "DELETE /orders/{id}"),
        ("GET", "/objects/5f2b8c9e1a3d4f6b7c8d9e0f/raw", "GET /objects/{id}/raw"),
        ("GET", "/v1/users/cafe", "GET /v1/users/cafe"),
        ("GET", "/words/deadbeefdeadbeefdead", "GET /words/deadbeefdeadbeefdead"),
        ("POST", "http://example.com:8080/tracking/9?x=1", "POST /tracking/{id}"),
        ("GET", "/?page=2", "GET /"),
        ("OPTIONS", "*", "OPTIONS *"),
        ("BREW", "/pot/1", "OTHER /pot/{id}"),
    ],
)
def test_routes_are_method_and_path_with_ids_replaced_and_no_query(method: str, target: str, route: str) -> None:
    assert normalise_route(method, target) == route


def test_a_very_long_path_is_cut() -> None:
    route = normalise_route("GET", "/" + "a" * 1000)
    assert len(route) == len("GET ") + 200


def test_each_service_keeps_a_bounded_number_of_routes_then_counts_other() -> None:
    labels = RouteLabels(limit=3)
    assert [labels.label(b"GET", f"/r{index}/1".encode()) for index in range(3)] == [
        "GET /r0/{id}",
        "GET /r1/{id}",
        "GET /r2/{id}",
    ]
    assert labels.label(b"GET", b"/r3/1") == OTHER_ROUTE
    assert labels.label(b"POST", b"/r0/2") == OTHER_ROUTE
    assert labels.label(b"GET", b"/r1/99?x=y") == "GET /r1/{id}"  # a known route keeps its label
    assert len(labels.known) == 3


def route(
    name: str, rps: float, mean_ms: float, *, p95: float | None = None, p99: float | None = None, errors: float = 0.0
) -> RouteMetrics:
    return RouteMetrics(
        route=name,
        requests_per_second=rps,
        errors_per_second=errors,
        mean_ms=mean_ms,
        p50_ms=mean_ms,
        p95_ms=p95 if p95 is not None else mean_ms * 1.5,
        p99_ms=p99 if p99 is not None else mean_ms * 2,
    )


def test_hot_spots_rank_routes_by_their_share_of_serving_time() -> None:
    routes = [route("GET /a", 10, 10), route("GET /report", 1, 500), route("GET /health", 100, 1)]
    shares = time_shares(routes)
    assert shares == pytest.approx({"GET /a": 100 / 700, "GET /report": 500 / 700, "GET /health": 100 / 700})
    spots = hot_spots(routes, service_p95_ms=15.0, policy=POLICY)
    assert [spot.route for spot in spots] == ["GET /report", "GET /a", "GET /health"]
    assert spots[0].why.startswith("71% of the time spent serving (1 req/s x 500 ms)")
    assert "p95 750 ms is 50.0x the service's 15 ms" in spots[0].why


def test_a_rare_but_slow_route_is_a_hot_spot_by_its_p95_alone() -> None:
    policy = NetworkPolicy(hot_spots=1)
    routes = [route("GET /a", 100, 10, p95=20), route("GET /slow", 0.1, 5, p95=400)]
    spots = hot_spots(routes, service_p95_ms=20.0, policy=policy)
    assert [spot.route for spot in spots] == ["GET /a", "GET /slow"]
    assert spots[1].why == "p95 400 ms is 20.0x the service's 20 ms"


@pytest.mark.parametrize(
    ("p99_ms", "timeout_ms"),
    [(123.0, 310.0), (10.0, 50.0), (1500.0, 3800.0), (20_000.0, 30_000.0), (None, None), (float("nan"), None)],
)
def test_the_client_timeout_is_about_p99_times_two_and_a_half_rounded_floored_and_capped(
    p99_ms: float | None, timeout_ms: float | None
) -> None:
    assert client_timeout_ms(p99_ms, POLICY) == timeout_ms


def service(routes: list[RouteMetrics], **numbers: float | None) -> NetworkMetrics:
    fields = {"p95_ms": 30.0, "p99_ms": 60.0, **numbers}
    return NetworkMetrics(service="shop", window="5m", routes=routes, **fields)


def test_a_route_the_service_timeout_would_cut_gets_its_own() -> None:
    report = analyse_network(service([route("GET /a", 10, 20, p99=50), route("GET /export", 1, 300, p99=900)]))
    assert report.timeout_ms == 150.0
    timeouts = {advice.route: advice.value for advice in report.advice if advice.kind == "timeout"}
    assert timeouts == {None: 150.0, "GET /export": 2300.0}
    by_route = {item.route: item for item in report.routes}
    assert (by_route["GET /a"].timeout_ms, by_route["GET /export"].timeout_ms) == (150.0, 2300.0)


def test_retries_only_for_idempotent_routes_and_not_above_the_retry_budget() -> None:
    report = analyse_network(
        service([route("GET /a", 10, 20), route("POST /orders", 5, 40), route("GET /flaky", 2, 10, errors=0.5)])
    )
    retries = [advice for advice in report.advice if advice.kind == "retries"]
    assert "on idempotent routes only (GET /a, GET /flaky)" in retries[0].message
    assert "no automatic retry of POST /orders unless requests carry an idempotency key" in retries[0].message
    assert [(advice.route, advice.value) for advice in retries[1:]] == [("GET /flaky", 0.25)]


def test_error_prone_routes_are_flagged_worst_first() -> None:
    routes = [
        route("GET /a", 100, 5, errors=0.5),
        route("GET /b", 10, 5, errors=1.0),
        route("GET /c", 10, 5, errors=2.0),
    ]
    report = analyse_network(service(routes))
    flagged = [(advice.route, advice.value) for advice in report.advice if advice.kind == "error_prone"]
    assert flagged == [("GET /c", pytest.approx(0.2)), ("GET /b", pytest.approx(0.1))]  # GET /a's 0.5%: under 1%
    assert report.error_rate == pytest.approx(3.5 / 120)


def test_connection_reuse_is_advised_only_where_the_counters_show_new_connections() -> None:
    routes = [route("GET /a", 20, 10)]
    fresh = analyse_network(
        service(routes, client_connections_per_second=18.0, upstream_connections_per_second=0.1, max_in_flight=3.2)
    )
    reuse = [advice for advice in fresh.advice if advice.kind == "connection_reuse"]
    assert len(reuse) == 1 and reuse[0].value == pytest.approx(0.9)
    assert "open a new connection for 90% of requests" in reuse[0].message
    assert "A pool of 4 connections" in reuse[0].message
    pooled = analyse_network(service(routes, client_connections_per_second=0.05, upstream_connections_per_second=0.0))
    assert not [advice for advice in pooled.advice if advice.kind == "connection_reuse"]
    unknown = analyse_network(service(routes))
    assert not [advice for advice in unknown.advice if advice.kind == "connection_reuse"]
    assert "no connection counters for this service: connection reuse not assessed" in unknown.notes


def test_no_traffic_and_the_other_route_are_noted() -> None:
    assert analyse_network(service([])).notes[0] == "no requests to shop in the last 5m: nothing to analyse"
    capped = analyse_network(service([route("GET /a", 1, 5), route(OTHER_ROUTE, 1, 5)]))
    assert any("counted together as 'other'" in note for note in capped.notes)


def test_the_queries_group_by_route_and_escape_the_service_name() -> None:
    queries = NetworkQueries().render('we"ird', "5m")
    assert queries["p95_ms"] == (
        "1000 * histogram_quantile(0.95, sum by (route, le) "
        '(rate(tmsops_proxy_route_request_duration_seconds_bucket{service="we\\"ird"}[5m])))'
    )
    assert 'code=~"5..|reset"' in queries["errors_per_second"]
    assert set(queries) >= {"requests_per_second", "mean_ms", "p50_ms", "p99_ms", "client_connections", "max_in_flight"}
