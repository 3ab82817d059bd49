"""The Prometheus loader against a real Prometheus scraping a real process."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from tmsops.errors import DataError, TemporaryError
from training.loaders.prometheus import (
    MAX_POINTS_PER_SERIES,
    chunk_ranges,
    label_suffix,
    load_prometheus,
)
from training.series import Series

# What the exporter started by the `prometheus` fixture in conftest.py serves.
EXPORTER_JOB = "tmsops_exporter"
QUEUE_DEPTH = 42.5
MEMORY_BYTES = {"cart": 2000.0, "checkout": 1000.0}

STEP_S = 1.0
STEP = np.timedelta64(1000, "ms")
GAUGE = f'tmsops_test_queue_depth{{job="{EXPORTER_JOB}"}}'
RATE = f'rate(tmsops_test_ticks_total{{job="{EXPORTER_JOB}"}}[10s])'
MEMORY = f'tmsops_test_memory_bytes{{job="{EXPORTER_JOB}"}}'


def _recent_range(seconds: int) -> tuple[datetime, datetime]:
    """A whole-second range ending a little in the past, so its samples no longer change."""
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=2)
    return end - timedelta(seconds=seconds), end


def _load(url: str, queries: dict[str, str], seconds: int = 30, **kwargs: int) -> list[Series]:
    start, end = _recent_range(seconds)
    return load_prometheus(url, queries, start=start, end=end, step_s=STEP_S, **kwargs)


def _by_key(series: list[Series]) -> dict[str, Series]:
    return {s.key: s for s in series}


def _assert_on_step_grid(series: Series, start: datetime) -> None:
    first = np.datetime64(start.replace(tzinfo=None), "ns")
    offsets = series.timestamps - first
    assert series.timestamps.dtype == np.dtype("datetime64[ns]")
    assert np.all(offsets >= np.timedelta64(0, "ns"))
    assert np.all(offsets % STEP == np.timedelta64(0, "ns"))


def test_gauge_values_and_timestamps(prometheus: str) -> None:
    start, end = _recent_range(30)
    [series] = load_prometheus(prometheus, {"checkout/queue_depth": GAUGE}, start=start, end=end, step_s=STEP_S)
    assert series.key == "checkout/queue_depth"
    assert series.source == f"{prometheus} query {GAUGE!r}"
    assert series.metric == "unknown"
    assert series.values.dtype == np.float64
    assert len(series) >= 2
    assert np.all(series.values == QUEUE_DEPTH)
    _assert_on_step_grid(series, start)
    assert np.all(np.diff(series.timestamps) == STEP)
    assert series.timestamps[-1] <= np.datetime64(end.replace(tzinfo=None), "ns")


def test_counter_rate_is_positive(prometheus: str) -> None:
    start, end = _recent_range(30)
    [series] = load_prometheus(
        prometheus,
        {"checkout/requests_per_s": RATE},
        start=start,
        end=end,
        step_s=STEP_S,
    )
    assert series.metric == "requests_per_s"
    assert len(series) >= 1
    assert np.all(np.isfinite(series.values))
    assert np.all(series.values > 0)
    _assert_on_step_grid(series, start)
    assert np.all(np.diff(series.timestamps) > np.timedelta64(0, "ns"))


def test_several_result_series_get_label_keys(prometheus: str) -> None:
    series = _by_key(_load(prometheus, {"fleet/memory_bytes": MEMORY}))
    assert len(series) == len(MEMORY_BYTES)
    for service, value in MEMORY_BYTES.items():
        [key] = [key for key in series if key.endswith(f",job={EXPORTER_JOB},service={service}")]
        assert key.startswith("fleet/memory_bytes/__name__=tmsops_test_memory_bytes,instance=127.0.0.1:")
        found = series[key]
        assert found.metric == "memory_bytes"
        assert found.category == "fleet/memory_bytes"
        assert np.all(found.values == value)


def test_chunked_loading_matches_one_request(prometheus: str) -> None:
    queries = {
        "checkout/requests_per_s": RATE,
        "checkout/queue_depth": GAUGE,
        "fleet/memory_bytes": MEMORY,
    }
    start, end = _recent_range(25)
    whole = load_prometheus(prometheus, queries, start=start, end=end, step_s=STEP_S)
    chunked = load_prometheus(prometheus, queries, start=start, end=end, step_s=STEP_S, max_points=3)
    assert [s.key for s in chunked] == [s.key for s in whole]
    for one, many in zip(whole, chunked, strict=True):
        np.testing.assert_array_equal(many.timestamps, one.timestamps)
        np.testing.assert_array_equal(many.values, one.values)


def test_range_over_the_prometheus_point_limit_is_split(prometheus: str) -> None:
    seconds = MAX_POINTS_PER_SERIES + 2_000
    [series] = _load(prometheus, {"checkout/queue_depth": GAUGE}, seconds=seconds)
    assert np.all(series.values == QUEUE_DEPTH)
    assert np.all(np.diff(series.timestamps) == STEP)


def test_chunks_larger_than_the_limit_are_refused_by_prometheus(
    prometheus: str,
) -> None:
    seconds = MAX_POINTS_PER_SERIES + 2_000
    with pytest.raises(DataError, match="11,000 points") as caught:
        _load(
            prometheus,
            {"checkout/queue_depth": GAUGE},
            seconds=seconds,
            max_points=seconds + 1,
        )
    assert caught.value.source == f"{prometheus} query {GAUGE!r}"


def test_nan_values_are_kept(prometheus: str) -> None:
    query = f"{GAUGE} * 0 / 0"
    [series] = _load(prometheus, {"checkout/queue_depth": query})
    assert len(series) >= 1
    assert np.all(np.isnan(series.values))


def test_bad_promql_is_a_data_error_naming_the_query(prometheus: str) -> None:
    query = "rate(tmsops_test_ticks_total[5s]"
    with pytest.raises(DataError) as caught:
        _load(prometheus, {"checkout/requests_per_s": query})
    assert caught.value.source == f"{prometheus} query {query!r}"
    assert repr(query) in str(caught.value)
    assert "parse error" in caught.value.problem


def test_query_without_data_is_a_data_error(prometheus: str) -> None:
    query = "tmsops_test_metric_that_does_not_exist"
    with pytest.raises(DataError, match="returned no series") as caught:
        _load(prometheus, {"checkout/requests_per_s": query})
    assert repr(query) in str(caught.value)


def test_unknown_host_is_a_temporary_error() -> None:
    url = "http://nonexistent.invalid:9090"
    with pytest.raises(TemporaryError, match="cannot be reached") as caught:
        _load(url, {"checkout/queue_depth": "up"}, seconds=5)
    assert "nonexistent.invalid" in caught.value.message
    assert caught.value.retryable


def test_refused_connection_is_a_temporary_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(TemporaryError, match="cannot be reached") as caught:
            _load(url, {"checkout/queue_depth": "up"}, seconds=5)
    assert url in caught.value.message


def test_chunks_cover_the_range_on_one_step_grid() -> None:
    chunks = list(chunk_ranges(0, 10_000, 1_000, 4))
    assert chunks == [(0, 3_000), (4_000, 7_000), (8_000, 10_000)]
    assert list(chunk_ranges(5, 5, 1_000, 4)) == [(5, 5)]


def test_label_suffix_is_sorted_and_escaped() -> None:
    labels = (("instance", "127.0.0.1:9100"), ("path", "/api/a,b=c"))
    assert label_suffix(labels) == "instance=127.0.0.1:9100,path=%2Fapi%2Fa%2Cb%3Dc"
    assert label_suffix(()) == "{}"
