"""PromQL templates, and PrometheusSource against an in-test HTTP server speaking (or not) the Prometheus API."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tmsops.errors import PermanentError, TemporaryError
from tmsops.fleet import metrics as fleet
from tmsops.metrics_source import (
    MetricsResponseError,
    MetricsUnavailable,
    PrometheusSource,
    QueryError,
    RangeSeries,
    Sample,
)
from tmsops.promql import METRICS, PromqlTemplates, TemplateError, escape_regex, escape_string, render_window
from tmsops.settings import CoreSettings

START = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


# --- templates ---------------------------------------------------------------------------------


def test_fleet_templates_render_the_exact_promql() -> None:
    rendered = PromqlTemplates.fleet().render_all("orders")

    assert rendered["requestsPerSecond"] == 'sum(rate(tmsops_proxy_requests_total{service="orders"}[1m]))'
    assert rendered["p95LatencyMs"] == (
        "1000 * histogram_quantile(0.95, sum by (le) "
        '(rate(tmsops_proxy_request_duration_seconds_bucket{service="orders"}[1m])))'
    )
    assert rendered["errorRate"] == (
        '(sum(rate(tmsops_proxy_requests_total{service="orders",code=~"5.."}[1m])) or vector(0))'
        ' / sum(rate(tmsops_proxy_requests_total{service="orders"}[1m]))'
    )
    assert rendered["cpuCores"] == 'sum(tmsops_fleet_cpu_cores{service="orders"})'
    assert rendered["memoryBytes"] == 'sum(tmsops_fleet_memory_bytes{service="orders"})'
    assert rendered["readyReplicas"] == 'sum(tmsops_fleet_ready_replicas{service="orders"})'


def test_fleet_templates_read_only_metrics_the_fleet_exports() -> None:
    exported = {
        f"{fleet.REQUESTS}_total",
        f"{fleet.DURATION}_bucket",
        fleet.CPU_CORES,
        fleet.MEMORY_BYTES,
        fleet.READY_REPLICAS,
    }
    used = set(re.findall(r"tmsops_\w+", " ".join(PromqlTemplates.fleet().render_all("orders").values())))

    assert used == exported


def test_kubernetes_templates_select_namespace_pods_and_workload() -> None:
    rendered = PromqlTemplates.kubernetes(namespace="shop", window=timedelta(seconds=30)).render_all("orders")

    assert rendered["cpuCores"] == (
        "sum(rate(container_cpu_usage_seconds_total"
        '{namespace="shop",pod=~"orders-[a-z0-9]+-[a-z0-9]+",container!=""}[30s]))'
    )
    assert 'container_memory_working_set_bytes{namespace="shop",' in rendered["memoryBytes"]
    assert rendered["readyReplicas"] == (
        'sum(kube_deployment_status_replicas_ready{namespace="shop",deployment="orders"})'
    )
    for metric in ("requestsPerSecond", "p95LatencyMs", "errorRate"):
        assert 'destination_workload_namespace="shop",destination_workload="orders"' in rendered[metric]
    assert "istio_request_duration_milliseconds_bucket" in rendered["p95LatencyMs"]
    assert 'response_code=~"5.."' in rendered["errorRate"]


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ('a"b', 'service="a\\"b"'),
        ("a\\b", 'service="a\\\\b"'),
        ("a\nb", 'service="a\\nb"'),
        ('x"}) or vector(1) #', 'service="x\\"}) or vector(1) #"'),
        ("{window}", 'service="{window}"'),
    ],
)
def test_service_names_are_escaped_as_promql_strings(service: str, expected: str) -> None:
    assert expected in PromqlTemplates.fleet().render("cpuCores", service)


def test_service_names_in_a_regex_matcher_are_escaped_twice() -> None:
    assert escape_regex("a.b*c") == "a\\.b\\*c"
    assert escape_string(escape_regex('a"b')) == 'a\\\\\\"b'
    rendered = PromqlTemplates.kubernetes().render("memoryBytes", "web.v2")
    assert 'pod=~"web\\\\.v2-[a-z0-9]+-[a-z0-9]+"' in rendered


def test_an_empty_service_name_is_refused() -> None:
    with pytest.raises(TemplateError, match="service name is empty"):
        PromqlTemplates.fleet().render("cpuCores", "")


@pytest.mark.parametrize(
    ("window", "text"),
    [
        (timedelta(minutes=1), "1m"),
        (timedelta(seconds=30), "30s"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(seconds=1.5), "1s500ms"),
        (timedelta(hours=2), "2h"),
        (timedelta(days=1, minutes=5), "1d5m"),
    ],
)
def test_window_rendering(window: timedelta, text: str) -> None:
    assert render_window(window) == text
    assert f"[{text}]" in PromqlTemplates.fleet(window=window).render("requestsPerSecond", "orders")


@pytest.mark.parametrize("window", [timedelta(0), timedelta(seconds=-5), timedelta(microseconds=10)])
def test_a_window_under_one_millisecond_is_refused(window: timedelta) -> None:
    with pytest.raises(TemplateError, match="at least 1 ms"):
        PromqlTemplates.fleet(window=window)


def test_overrides_replace_one_template_by_camel_or_snake_case_name() -> None:
    overrides = {"cpuCores": 'max(my_cpu{app="{service}"}[{window}])', "memory_bytes": 'my_mem{ns="{namespace}"}'}
    templates = PromqlTemplates.built_in("kubernetes", namespace="shop", overrides=overrides)

    assert templates.render("cpuCores", "orders") == 'max(my_cpu{app="orders"}[1m])'
    assert templates.render("memoryBytes", "orders") == 'my_mem{ns="shop"}'
    assert templates.render("readyReplicas", "orders").startswith("sum(kube_deployment_status_replicas_ready")


def test_an_unknown_override_key_is_refused_by_name() -> None:
    with pytest.raises(TemplateError, match=r"metrics\.templates\.cpuUsage: unknown metric") as caught:
        PromqlTemplates.built_in("fleet", overrides={"cpuUsage": "up"})

    assert isinstance(caught.value, PermanentError)
    assert "requestsPerSecond" in str(caught.value)


@pytest.mark.parametrize(
    ("template", "problem"),
    [("", "is empty"), ("   ", "is empty"), ('up{service="{svc}"}', "unknown placeholder {svc}")],
)
def test_a_bad_override_template_is_refused(template: str, problem: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(problem)):
        PromqlTemplates.built_in("fleet", overrides={"errorRate": template})


def test_templates_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_environment(monkeypatch)
    settings = CoreSettings(
        target={"kind": "kubernetes", "kubernetes": {"namespace": "shop"}},
        metrics={"window": "30s", "templates": {"readyReplicas": 'ready{d="{service}",ns="{namespace}"}'}},
    )

    templates = PromqlTemplates.from_settings(settings)

    assert templates.kind == "kubernetes"
    assert templates.window_text == "30s"
    assert templates.render("readyReplicas", "orders") == 'ready{d="orders",ns="shop"}'
    assert "[30s]" in templates.render("cpuCores", "orders")


def test_an_unknown_template_in_settings_fails_building_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_environment(monkeypatch)
    settings = CoreSettings(metrics={"templates": {"latencyP99": "up"}})

    with pytest.raises(TemplateError, match="latencyP99"):
        PrometheusSource.from_settings(settings)


def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("TMSOPS_")]:
        monkeypatch.delenv(name)


# --- an in-test server -------------------------------------------------------------------------


@dataclass
class Answer:
    """What the server sends back: a status, a body, and an optional delay before it."""

    status: int = 200
    body: object = None
    raw: bytes | None = None
    delay_s: float = 0.0

    def payload(self) -> bytes:
        return self.raw if self.raw is not None else json.dumps(self.body).encode()


Router = Callable[[str, dict[str, str]], Answer]


@dataclass
class StubPrometheus:
    """A real HTTP server in a thread; ``route`` picks the answer for each (path, query parameters)."""

    route: Router = field(default=lambda path, params: Answer(body=vector()))
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, path: str, params: dict[str, str]) -> Answer:
        self.requests.append((path, params))
        return self.route(path, params)


def _handler(stub: StubPrometheus) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            params = {key: values[-1] for key, values in parse_qs(parts.query).items()}
            answer = stub.answer(parts.path, params)
            time.sleep(answer.delay_s)
            payload = answer.payload()
            try:
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout test)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def stub() -> Iterator[StubPrometheus]:
    stub = StubPrometheus()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
    server.daemon_threads = True
    server.block_on_close = False
    stub.server = server
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield stub
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
async def source(stub: StubPrometheus) -> AsyncIterator[PrometheusSource]:
    async with PrometheusSource(stub.url, timeout_s=2.0, templates=PromqlTemplates.fleet()) as opened:
        yield opened


def success(data: object) -> dict[str, object]:
    return {"status": "success", "data": data}


def vector(*items: tuple[dict[str, str], str]) -> dict[str, object]:
    result = [{"metric": labels, "value": [START.timestamp(), value]} for labels, value in items]
    return success({"resultType": "vector", "result": result})


def fixed(answer: Answer) -> Router:
    return lambda path, params: answer


# --- parsing -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_instant_vector_with_labels_and_the_time_sent(stub: StubPrometheus, source: PrometheusSource) -> None:
    stub.route = fixed(Answer(body=vector(({"service": "a"}, "1.5"), ({"service": "b"}, "NaN"))))

    samples = await source.query("up", at=START)

    assert samples[0] == Sample(labels={"service": "a"}, value=1.5)
    assert samples[1].labels == {"service": "b"} and math.isnan(samples[1].value)
    assert stub.requests == [("/api/v1/query", {"query": "up", "time": f"{START.timestamp():.3f}"})]


@pytest.mark.anyio
async def test_a_scalar_result_is_one_sample_without_labels(stub: StubPrometheus, source: PrometheusSource) -> None:
    stub.route = fixed(Answer(body=success({"resultType": "scalar", "result": [START.timestamp(), "+Inf"]})))

    assert await source.query("1/0") == [Sample(labels={}, value=math.inf)]
    assert "time" not in stub.requests[0][1]


@pytest.mark.anyio
async def test_a_range_query(stub: StubPrometheus, source: PrometheusSource) -> None:
    values = [[START.timestamp() + i, str(i)] for i in range(3)] + [[START.timestamp() + 3, "-Inf"]]
    body = success({"resultType": "matrix", "result": [{"metric": {"job": "x"}, "values": values}]})
    stub.route = fixed(Answer(body=body))

    series = await source.query_range("up", START, START + timedelta(seconds=3), timedelta(seconds=1))

    assert series == [
        RangeSeries(
            labels={"job": "x"},
            points=[(START + timedelta(seconds=i), float(i)) for i in range(3)]
            + [(START + timedelta(seconds=3), -math.inf)],
        )
    ]
    path, params = stub.requests[0]
    assert path == "/api/v1/query_range"
    assert params == {
        "query": "up",
        "start": f"{START.timestamp():.3f}",
        "end": f"{START.timestamp() + 3:.3f}",
        "step": "1.000",
    }


@pytest.mark.anyio
async def test_a_snapshot_runs_every_template_and_reports_nan_and_no_data_as_none(
    stub: StubPrometheus, source: PrometheusSource
) -> None:
    values = {"requests_total{": "12.5", "bucket": "NaN", "cpu_cores": "0.5", "memory_bytes": "1024"}

    def route(path: str, params: dict[str, str]) -> Answer:
        query = params["query"]
        if query.startswith("(sum(rate("):
            return Answer(body=vector(({}, "0.25")))
        found = [value for key, value in values.items() if key in query]
        return Answer(body=vector(({}, found[0])) if found else vector())

    stub.route = route

    snapshot = await source.service_snapshot("orders")

    assert snapshot.model_dump(exclude={"at"}) == {
        "service": "orders",
        "requests_per_second": 12.5,
        "cpu_cores": 0.5,
        "memory_bytes": 1024.0,
        "p95_latency_ms": None,
        "error_rate": 0.25,
        "ready_replicas": None,
    }
    assert len(stub.requests) == len(METRICS)
    assert len({params["time"] for _, params in stub.requests}) == 1


@pytest.mark.anyio
async def test_a_template_that_returns_several_series_is_refused(
    stub: StubPrometheus, source: PrometheusSource
) -> None:
    stub.route = fixed(Answer(body=vector(({"pod": "a"}, "1"), ({"pod": "b"}, "2"))))

    with pytest.raises(TemplateError, match="returned 2 series, expected one"):
        await source.service_snapshot("orders")


@pytest.mark.anyio
async def test_service_history_of_one_metric(stub: StubPrometheus, source: PrometheusSource) -> None:
    values = [[START.timestamp(), "3"], [START.timestamp() + 60, "4"]]
    stub.route = fixed(Answer(body=success({"resultType": "matrix", "result": [{"metric": {}, "values": values}]})))

    points = await source.service_history(
        "orders", "cpu_cores", START, START + timedelta(minutes=1), timedelta(minutes=1)
    )

    assert points == [(START, 3.0), (START + timedelta(minutes=1), 4.0)]
    assert stub.requests[0][1]["query"] == 'sum(tmsops_fleet_cpu_cores{service="orders"})'


@pytest.mark.anyio
async def test_service_history_refuses_an_unknown_metric(source: PrometheusSource) -> None:
    with pytest.raises(TemplateError, match="unknown metric 'latency'"):
        await source.service_history("orders", "latency", START, START + timedelta(minutes=1), timedelta(seconds=1))


# --- range checks ------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("end", "step", "problem"),
    [
        (START + timedelta(minutes=1), timedelta(0), "step must be at least 1 ms"),
        (START + timedelta(minutes=1), timedelta(seconds=-1), "step must be at least 1 ms"),
        (START, timedelta(seconds=1), "must be before end"),
        (START - timedelta(seconds=1), timedelta(seconds=1), "must be before end"),
        (START + timedelta(seconds=11_001), timedelta(seconds=1), "make 11002 points per series"),
    ],
)
async def test_bad_ranges_are_refused_before_any_request(
    stub: StubPrometheus, source: PrometheusSource, end: datetime, step: timedelta, problem: str
) -> None:
    with pytest.raises(PermanentError, match=problem) as caught:
        await source.query_range("up", START, end, step)

    assert stub.requests == []
    if "points" in problem:
        assert "step 0:00:01" in str(caught.value) and START.isoformat() in str(caught.value)


@pytest.mark.anyio
async def test_the_largest_range_prometheus_allows_is_sent(stub: StubPrometheus, source: PrometheusSource) -> None:
    stub.route = fixed(Answer(body=success({"resultType": "matrix", "result": []})))

    assert await source.query_range("up", START, START + timedelta(seconds=11_000), timedelta(seconds=1)) == []


@pytest.mark.anyio
async def test_naive_datetimes_are_utc(stub: StubPrometheus, source: PrometheusSource) -> None:
    stub.route = fixed(Answer(body=success({"resultType": "matrix", "result": []})))

    await source.query_range(
        "up", START.replace(tzinfo=None), START.replace(tzinfo=None) + timedelta(seconds=5), timedelta(seconds=1)
    )

    assert stub.requests[0][1]["start"] == f"{START.timestamp():.3f}"


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "answer",
    [
        Answer(raw=b"<html>Welcome to nginx</html>"),
        Answer(raw=b""),
        Answer(body={"hello": "world"}),
        Answer(body=[1, 2, 3]),
        Answer(body={"status": "success"}),
        Answer(body=success({"result": []})),
        Answer(body=success({"resultType": "vector", "result": {"a": 1}})),
        Answer(body=success({"resultType": "vector", "result": [{"value": [1, "2"]}]})),
        Answer(body=success({"resultType": "vector", "result": [{"metric": {}, "value": [1, 2]}]})),
        Answer(body=success({"resultType": "vector", "result": [{"metric": {}, "value": ["x", "2"]}]})),
        Answer(body=success({"resultType": "matrix", "result": []})),
        Answer(status=404, raw=b"404 page not found"),
    ],
    ids=[
        "html",
        "empty",
        "other-json",
        "json-list",
        "no-data",
        "no-result-type",
        "result-not-list",
        "no-metric",
        "value-not-string",
        "time-not-number",
        "wrong-result-type",
        "404-text",
    ],
)
async def test_an_answer_that_is_not_a_prometheus_response(
    stub: StubPrometheus, source: PrometheusSource, answer: Answer
) -> None:
    stub.route = fixed(answer)

    with pytest.raises(MetricsResponseError) as caught:
        await source.query("up")

    assert "is not a Prometheus API response" in str(caught.value)
    assert f"{stub.url}/api/v1/query" in str(caught.value)
    assert not caught.value.retryable


@pytest.mark.anyio
async def test_a_range_answer_that_is_not_a_matrix(stub: StubPrometheus, source: PrometheusSource) -> None:
    stub.route = fixed(Answer(body=vector()))

    with pytest.raises(MetricsResponseError, match="expected a matrix result"):
        await source.query_range("up", START, START + timedelta(seconds=5), timedelta(seconds=1))


@pytest.mark.anyio
@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_server_errors_are_temporary(stub: StubPrometheus, source: PrometheusSource, status: int) -> None:
    body = {"status": "error", "errorType": "unavailable", "error": "too many queries"}
    stub.route = fixed(Answer(status=status, body=body))

    with pytest.raises(MetricsUnavailable) as caught:
        await source.query("up")

    assert isinstance(caught.value, TemporaryError) and caught.value.retryable
    assert f"{stub.url}/api/v1/query" in str(caught.value)
    assert str(status) in str(caught.value)


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "error_type"), [(400, "bad_data"), (422, "execution")])
async def test_a_refused_query_is_permanent_and_names_the_query(
    stub: StubPrometheus, source: PrometheusSource, status: int, error_type: str
) -> None:
    message = "1:5: parse error: unclosed left parenthesis"
    stub.route = fixed(Answer(status=status, body={"status": "error", "errorType": error_type, "error": message}))

    with pytest.raises(QueryError) as caught:
        await source.query("sum(")

    assert isinstance(caught.value, PermanentError) and not caught.value.retryable
    assert caught.value.error_type == error_type
    assert caught.value.query == "sum("
    assert message in str(caught.value) and "query: sum(" in str(caught.value)


@pytest.mark.anyio
async def test_one_failing_query_fails_the_snapshot_with_that_error(
    stub: StubPrometheus, source: PrometheusSource
) -> None:
    def route(path: str, params: dict[str, str]) -> Answer:
        return Answer(status=503, raw=b"overloaded") if "or vector(0)" in params["query"] else Answer(body=vector())

    stub.route = route

    with pytest.raises(MetricsUnavailable, match="HTTP 503"):
        await source.service_snapshot("orders")


@pytest.mark.anyio
async def test_a_closed_port_is_temporary_and_keeps_the_cause() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async with PrometheusSource(url, timeout_s=2.0, templates=PromqlTemplates.fleet()) as closed:
        with pytest.raises(MetricsUnavailable) as caught:
            await closed.service_snapshot("orders")

    assert f"{url}/api/v1/query" in str(caught.value)
    assert "cannot be reached" in str(caught.value)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


@pytest.mark.anyio
async def test_a_timeout_is_temporary(stub: StubPrometheus) -> None:
    stub.route = fixed(Answer(body=vector(), delay_s=1.0))

    async with PrometheusSource(stub.url, timeout_s=0.1, templates=PromqlTemplates.fleet()) as slow:
        with pytest.raises(MetricsUnavailable, match="did not answer within the timeout") as caught:
            await slow.query("up")

    assert isinstance(caught.value.__cause__, httpx.TimeoutException)


def test_a_url_without_a_scheme_is_refused() -> None:
    with pytest.raises(PermanentError, match="must start with http"):
        PrometheusSource("localhost:9090", timeout_s=1.0, templates=PromqlTemplates.fleet())
