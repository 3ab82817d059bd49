"""Live metrics from the Prometheus HTTP API (``/api/v1/query``, ``/api/v1/query_range``).

:class:`PrometheusSource` runs raw PromQL and the per-service reads built on
:class:`tmsops.promql.PromqlTemplates`. Values are floats as Prometheus gives them (``NaN``
and ``Inf`` included); :meth:`PrometheusSource.service_snapshot` reports a missing or
non-finite value as ``None``.

Errors say whether a retry helps: :class:`MetricsUnavailable` (temporary: Prometheus is down,
slow or overloaded), :class:`QueryError` (permanent: Prometheus refused the query) and
:class:`MetricsResponseError` (permanent: the URL does not answer like a Prometheus API).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from tmsops.errors import PermanentError, TemporaryError
from tmsops.promql import METRICS, PromqlTemplates, TemplateError, metric_key
from tmsops.settings import CoreSettings

# Prometheus refuses a range query whose (end - start) / step exceeds this.
MAX_RANGE_STEPS = 11_000
UNAVAILABLE_STATUSES = frozenset({429})
Point = tuple[datetime, float]


class MetricsUnavailable(TemporaryError):
    """Prometheus cannot be reached, timed out or answered a server error; retrying later may help."""


class QueryError(PermanentError):
    """Prometheus refused the query (``bad_data``, ``execution``...); retrying the same query will not help."""

    def __init__(
        self, message: str, *, query: str, error_type: str = "", details: dict[str, object] | None = None
    ) -> None:
        super().__init__(message, details={"query": query, "error_type": error_type, **(details or {})})
        self.query = query
        self.error_type = error_type


class MetricsResponseError(PermanentError):
    """The answer is not a Prometheus API response (wrong URL, a proxy's page); retrying will not help."""


class Sample(BaseModel):
    """One value of an instant query: the series' labels (empty for a scalar) and its value."""

    model_config = ConfigDict(frozen=True)

    labels: dict[str, str]
    value: float


class RangeSeries(BaseModel):
    """One series of a range query: its labels and its (time, value) points, oldest first."""

    model_config = ConfigDict(frozen=True)

    labels: dict[str, str]
    points: list[Point]


class ServiceSnapshot(BaseModel):
    """A service's current metrics; a field is None when Prometheus has no (finite) value for it."""

    model_config = ConfigDict(frozen=True)

    service: str
    at: datetime
    requests_per_second: float | None
    cpu_cores: float | None
    memory_bytes: float | None
    p95_latency_ms: float | None
    error_rate: float | None
    ready_replicas: float | None


_SNAPSHOT_FIELDS = {
    "requestsPerSecond": "requests_per_second",
    "cpuCores": "cpu_cores",
    "memoryBytes": "memory_bytes",
    "p95LatencyMs": "p95_latency_ms",
    "errorRate": "error_rate",
    "readyReplicas": "ready_replicas",
}


class PrometheusSource:
    """Async client of the Prometheus HTTP API; use as ``async with PrometheusSource(...) as source``."""

    def __init__(self, base_url: str, *, timeout_s: float, templates: PromqlTemplates) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise PermanentError(f"Prometheus URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.templates = templates
        self._http = httpx.AsyncClient(timeout=timeout_s)

    @classmethod
    def from_settings(cls, settings: CoreSettings) -> PrometheusSource:
        """A source on ``prometheus_url`` with ``metrics.timeout`` and the target kind's templates."""
        templates = PromqlTemplates.from_settings(settings)
        return cls(settings.prometheus_url, timeout_s=settings.metrics.timeout.total_seconds(), templates=templates)

    async def __aenter__(self) -> PrometheusSource:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def query(self, promql: str, at: datetime | None = None) -> list[Sample]:
        """An instant query at ``at`` (Prometheus's now if None); a scalar result is one Sample without labels."""
        params = {"query": promql}
        if at is not None:
            params["time"] = _timestamp(at)
        data = await self._get("/api/v1/query", params)
        return _instant_result(data, self._url("/api/v1/query"))

    async def query_range(self, promql: str, start: datetime, end: datetime, step: timedelta) -> list[RangeSeries]:
        """A range query over ``[start, end]`` every ``step``; naive datetimes are UTC."""
        _check_range(start, end, step)
        params = {"query": promql, "start": _timestamp(start), "end": _timestamp(end), "step": _seconds(step)}
        data = await self._get("/api/v1/query_range", params)
        return _matrix_result(data, self._url("/api/v1/query_range"))

    async def service_snapshot(self, service: str) -> ServiceSnapshot:
        """Every templated metric of ``service`` at one instant, queried concurrently."""
        queries = self.templates.render_all(service)
        at = datetime.now(UTC)
        values = await self._query_all(queries, at)
        fields = {_SNAPSHOT_FIELDS[metric]: _finite(value) for metric, value in values.items()}
        return ServiceSnapshot(service=service, at=at, **fields)

    async def service_history(
        self,
        service: str,
        metric_name: str,
        start: datetime,
        end: datetime,
        step: timedelta,
        window: timedelta | None = None,
    ) -> list[Point]:
        """One templated metric of ``service`` over ``[start, end]``; empty when Prometheus has no data.
        ``window``: the rate window, when not the configured one (e.g. the step: each point the step's mean)."""
        metric = metric_key(metric_name)
        templates = self.templates if window is None else replace(self.templates, window=window)
        promql = templates.render(metric, service)
        series = await self.query_range(promql, start, end, step)
        _check_single(metric, promql, len(series))
        return series[0].points if series else []

    async def _query_all(self, queries: Mapping[str, str], at: datetime) -> dict[str, float | None]:
        """Run the queries concurrently; the first failure is raised and the other queries cancelled."""
        failure: Exception | None = None
        try:
            async with asyncio.TaskGroup() as group:
                tasks = {metric: group.create_task(self._single_value(metric, q, at)) for metric, q in queries.items()}
        except* Exception as failures:
            failure = failures.exceptions[0]
        if failure is not None:
            raise failure
        return {metric: tasks[metric].result() for metric in METRICS if metric in tasks}

    async def _single_value(self, metric: str, promql: str, at: datetime) -> float | None:
        samples = await self.query(promql, at)
        _check_single(metric, promql, len(samples))
        return samples[0].value if samples else None

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    async def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        """One API call; returns the ``data`` member of a successful answer."""
        url = self._url(path)
        try:
            response = await self._http.get(url, params=params)
        except httpx.TimeoutException as error:
            raise _unavailable(url, f"did not answer within the timeout ({type(error).__name__})") from error
        except httpx.TransportError as error:
            raise _unavailable(url, f"cannot be reached ({type(error).__name__}: {error})") from error
        except httpx.RequestError as error:
            raise _not_prometheus(url, f"the request failed: {error}") from error
        return _data(response, url, params["query"])


def _unavailable(url: str, problem: str) -> MetricsUnavailable:
    message = f"Prometheus at {url} {problem}; retrying later may help"
    return MetricsUnavailable(message, details={"url": url})


def _not_prometheus(url: str, problem: str) -> MetricsResponseError:
    message = f"the answer of {url} is not a Prometheus API response: {problem}; retrying will not help"
    return MetricsResponseError(message, details={"url": url})


def _data(response: httpx.Response, url: str, query: str) -> dict[str, Any]:
    """The ``data`` of a success answer; errors mapped to MetricsUnavailable, QueryError or MetricsResponseError."""
    status = response.status_code
    if status >= 500 or status in UNAVAILABLE_STATUSES:
        raise _unavailable(url, f"answered HTTP {status}: {response.text[:300]}")
    try:
        body = response.json()
    except ValueError as error:
        raise _not_prometheus(url, f"HTTP {status} with a body that is not JSON: {response.text[:200]!r}") from error
    if isinstance(body, dict) and body.get("status") == "error":
        raise _query_error(body, status, query)
    if not isinstance(body, dict) or body.get("status") != "success" or not isinstance(body.get("data"), dict):
        raise _not_prometheus(url, f"HTTP {status} with JSON {str(body)[:200]}")
    if status != 200:
        raise _not_prometheus(url, f"HTTP {status} with a success body")
    return body["data"]


def _query_error(body: dict[str, Any], status: int, query: str) -> QueryError:
    error_type, text = str(body.get("errorType") or "unknown"), str(body.get("error") or "no error text")
    message = f"Prometheus refused the query ({error_type}, HTTP {status}): {text}; query: {query}"
    return QueryError(message, query=query, error_type=error_type, details={"status": status, "error": text})


def _instant_result(data: dict[str, Any], url: str) -> list[Sample]:
    """Samples of a ``vector`` or ``scalar`` result."""
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return [Sample(labels={}, value=_point(result, url)[1])]
    if kind != "vector" or not isinstance(result, list):
        raise _not_prometheus(url, f"expected a vector or scalar result, got resultType {kind!r}")
    return [Sample(labels=_labels(item, url), value=_point(item.get("value"), url)[1]) for item in result]


def _matrix_result(data: dict[str, Any], url: str) -> list[RangeSeries]:
    """Series of a ``matrix`` result."""
    kind, result = data.get("resultType"), data.get("result")
    if kind != "matrix" or not isinstance(result, list):
        raise _not_prometheus(url, f"expected a matrix result, got resultType {kind!r}")
    return [RangeSeries(labels=_labels(item, url), points=_points(item, url)) for item in result]


def _labels(item: object, url: str) -> dict[str, str]:
    if not isinstance(item, dict) or not isinstance(item.get("metric"), dict):
        raise _not_prometheus(url, f"a result item without a metric: {str(item)[:200]}")
    if "histogram" in item or "histograms" in item:
        raise _not_prometheus(url, "native histogram samples; aggregate them to floats (histogram_quantile...)")
    return {str(name): str(value) for name, value in item["metric"].items()}


def _points(item: dict[str, Any], url: str) -> list[Point]:
    values = item.get("values")
    if not isinstance(values, list):
        raise _not_prometheus(url, f"a matrix series without values: {str(item)[:200]}")
    return [_point(pair, url) for pair in values]


def _point(pair: object, url: str) -> Point:
    """``[unix seconds, "value"]`` as (UTC datetime, float); ``"NaN"``, ``"+Inf"`` and ``"-Inf"`` kept."""
    if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[1], str):
        raise _not_prometheus(url, f'a sample that is not [time, "value"]: {str(pair)[:100]}')
    try:
        return datetime.fromtimestamp(float(pair[0]), UTC), float(pair[1])
    except (TypeError, ValueError, OverflowError) as error:
        raise _not_prometheus(url, f'a sample that is not [time, "value"]: {pair!r}') from error


def _check_single(metric: str, promql: str, count: int) -> None:
    if count > 1:
        message = f"the PromQL of {metric} returned {count} series, expected one: aggregate it (sum...); {promql}"
        raise TemplateError(message, details={"metric": metric, "query": promql})


def _check_range(start: datetime, end: datetime, step: timedelta) -> None:
    """Refuse a step under 1 ms, an empty range and more steps than Prometheus allows."""
    if step < timedelta(milliseconds=1):
        raise PermanentError(f"step must be at least 1 ms, got {step}", details={"step_s": step.total_seconds()})
    begin, finish = _aware(start), _aware(end)
    if begin >= finish:
        raise PermanentError(f"start {begin.isoformat()} must be before end {finish.isoformat()}")
    steps = (finish - begin) / step
    if steps > MAX_RANGE_STEPS:
        message = (
            f"start {begin.isoformat()}, end {finish.isoformat()} and step {step} make {math.floor(steps) + 1} points "
            f"per series; Prometheus allows at most (end - start) / step = {MAX_RANGE_STEPS:,}: use a larger step"
        )
        raise PermanentError(message, details={"steps": steps, "max_steps": MAX_RANGE_STEPS})


def _aware(moment: datetime) -> datetime:
    """``moment`` with a time zone; a naive datetime is taken as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _timestamp(moment: datetime) -> str:
    return f"{_aware(moment).timestamp():.3f}"


def _seconds(step: timedelta) -> str:
    return f"{step.total_seconds():.3f}"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
