"""Read metric series from the Prometheus HTTP API (``/api/v1/query_range``).

Each PromQL query in the mapping becomes one :class:`Series` per result series.
Long ranges are split into chunks that stay under Prometheus's limit of 11,000
points per series, and the chunks are joined again in time order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import httpx
import numpy as np

from tmsops.errors import DataError, PermanentError, TemporaryError
from training.series import Series, metric_kind

# Prometheus refuses a range query whose (end - start) / step exceeds this.
MAX_POINTS_PER_SERIES = 11_000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

LabelSet = tuple[tuple[str, str], ...]


@dataclass
class _Samples:
    """Samples of one result series, gathered over all chunks in time order."""

    times_ms: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


def load_prometheus(
    url: str,
    queries: Mapping[str, str],
    *,
    start: datetime,
    end: datetime,
    step_s: float,
    timeout_s: float = 10.0,
    max_points: int = MAX_POINTS_PER_SERIES,
) -> list[Series]:
    """Run each query over ``[start, end]`` every ``step_s`` seconds; one Series per result series.

    ``queries`` maps a key prefix such as ``checkout/requests_per_s`` to PromQL. A
    query with one result series gives the key ``prefix``; with several, each key is
    ``prefix/<labels>`` (labels sorted by name, ``name=value`` joined by commas).
    Naive datetimes are taken as UTC. Raises TemporaryError when Prometheus cannot
    be reached or answers with a server error, DataError when it rejects a query
    or a query returns no series.
    """
    base = url.rstrip("/")
    step_ms = _check_range(start, end, step_s, max_points)
    start_ms, end_ms = _to_ms(start), _to_ms(end)
    series: list[Series] = []
    with httpx.Client(timeout=timeout_s) as client:
        for prefix, promql in queries.items():
            source = f"{url} query {promql!r}"
            gathered = _gather(
                client, base, promql, source, (start_ms, end_ms, step_ms), max_points
            )
            series.extend(_to_series(prefix, gathered, source))
    return series


def _check_range(start: datetime, end: datetime, step_s: float, max_points: int) -> int:
    """Return the step in milliseconds after checking the arguments make a valid range."""
    step_ms = round(step_s * 1000)
    if step_ms < 1:
        raise PermanentError(f"step_s must be at least 0.001 s, got {step_s!r}")
    if max_points < 1:
        raise PermanentError(f"max_points must be at least 1, got {max_points!r}")
    if _to_ms(end) < _to_ms(start):
        raise PermanentError(
            f"end {end.isoformat()} is before start {start.isoformat()}"
        )
    return step_ms


def _to_ms(moment: datetime) -> int:
    """Milliseconds since the Unix epoch; a naive datetime is taken as UTC."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return (aware - _EPOCH) // _MS


def chunk_ranges(
    start_ms: int, end_ms: int, step_ms: int, max_points: int
) -> Iterator[tuple[int, int]]:
    """Split ``[start_ms, end_ms]`` into ranges of at most ``max_points`` points on the same step grid."""
    span = (max_points - 1) * step_ms
    chunk_start = start_ms
    while chunk_start <= end_ms:
        yield chunk_start, min(chunk_start + span, end_ms)
        chunk_start += span + step_ms


def _gather(
    client: httpx.Client,
    base: str,
    promql: str,
    source: str,
    grid: tuple[int, int, int],
    max_points: int,
) -> dict[LabelSet, _Samples]:
    """Run one query chunk by chunk and merge the result series by label set."""
    start_ms, end_ms, step_ms = grid
    gathered: dict[LabelSet, _Samples] = {}
    for chunk_start, chunk_end in chunk_ranges(start_ms, end_ms, step_ms, max_points):
        params = {
            "query": promql,
            "start": _seconds(chunk_start),
            "end": _seconds(chunk_end),
            "step": _seconds(step_ms),
        }
        for labels, values in _query_range(client, base, params, source):
            _append(gathered.setdefault(labels, _Samples()), values, source)
    return gathered


def _seconds(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"


def _query_range(
    client: httpx.Client, base: str, params: dict[str, str], source: str
) -> list[tuple[LabelSet, list[list[object]]]]:
    """One call of ``/api/v1/query_range``: the result series as (labels, [[time, "value"], ...])."""
    endpoint = f"{base}/api/v1/query_range"
    try:
        response = client.get(endpoint, params=params)
    except httpx.TimeoutException as exc:
        raise TemporaryError(
            f"Prometheus at {base} did not answer in time: {exc}"
        ) from exc
    except httpx.TransportError as exc:
        raise TemporaryError(f"Prometheus at {base} cannot be reached: {exc}") from exc
    body = _json_body(response, base, source)
    if body.get("status") != "success":
        raise DataError(source, f"Prometheus refused the query: {_error_text(body)}")
    data = body.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "matrix":
        raise DataError(
            source, f"expected a matrix result from {endpoint}, got {str(data)[:200]}"
        )
    return [
        (_label_set(item, source), _values_of(item, source))
        for item in data.get("result") or []
    ]


def _json_body(response: httpx.Response, base: str, source: str) -> dict[str, object]:
    """The decoded JSON answer; server errors are temporary, client errors are the query's fault."""
    if response.status_code >= 500:
        raise TemporaryError(
            f"Prometheus at {base} answered HTTP {response.status_code}: {response.text[:300]}",
            details={"status_code": response.status_code},
        )
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        problem = f"HTTP {response.status_code} with a body that is not a Prometheus API answer: "
        raise DataError(source, problem + response.text[:300])
    if response.status_code >= 400 and body.get("status") != "error":
        raise DataError(source, f"HTTP {response.status_code}: {response.text[:300]}")
    return body


def _error_text(body: Mapping[str, object]) -> str:
    kind = body.get("errorType")
    text = str(body.get("error") or "no error text")
    return f"{kind}: {text}" if kind else text


def _label_set(item: object, source: str) -> LabelSet:
    if not isinstance(item, dict) or not isinstance(item.get("metric"), dict):
        raise DataError(source, f"malformed result series: {str(item)[:200]}")
    return tuple(sorted((str(k), str(v)) for k, v in item["metric"].items()))


def _values_of(item: dict[str, object], source: str) -> list[list[object]]:
    values = item.get("values")
    if not isinstance(values, list):
        raise DataError(source, f"result series without values: {str(item)[:200]}")
    return values


def _append(samples: _Samples, values: list[list[object]], source: str) -> None:
    """Add ``[time, "value"]`` pairs; "NaN" and "+Inf" stay as they are for validation to judge."""
    for pair in values:
        try:
            moment, text = pair
            samples.times_ms.append(round(float(str(moment)) * 1000))
            samples.values.append(float(str(text)))
        except (TypeError, ValueError) as exc:
            raise DataError(source, f"malformed sample {pair!r}: {exc}") from exc


def _to_series(
    prefix: str, gathered: Mapping[LabelSet, _Samples], source: str
) -> list[Series]:
    """One Series per label set, keyed ``prefix`` alone or ``prefix/<labels>``, sorted by key."""
    if not gathered:
        raise DataError(
            source, "the query returned no series for the requested time range"
        )
    single = len(gathered) == 1
    keyed = {
        prefix if single else f"{prefix}/{label_suffix(labels)}": s
        for labels, s in gathered.items()
    }
    return [
        Series(
            key=key,
            timestamps=np.array(samples.times_ms, dtype="datetime64[ms]").astype(
                "datetime64[ns]"
            ),
            values=np.array(samples.values, dtype=np.float64),
            metric=metric_kind(prefix),
            source=source,
        )
        for key, samples in sorted(keyed.items())
    ]


def label_suffix(labels: LabelSet) -> str:
    """``name=value`` pairs sorted by name and joined by commas.

    Values are percent-escaped where they hold ``/``, ``,``, ``=`` or ``%`` so the
    suffix never adds a level to the key and two label sets never share a suffix.
    An empty label set gives ``{}``.
    """
    if not labels:
        return "{}"
    return ",".join(f"{name}={quote(value, safe=':@+-._~ ')}" for name, value in labels)
