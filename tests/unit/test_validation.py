"""The Great Expectations suite names the file, the expectation and the offending rows."""

from __future__ import annotations

import numpy as np
import pytest

from training.series import Series
from training.validation import Rules, validate

pytestmark = pytest.mark.xdist_group("gx")


def series(values: np.ndarray, *, metric: str = "cpu_percent", minutes: np.ndarray | None = None) -> Series:
    steps = np.arange(len(values)) * 5 if minutes is None else minutes
    stamps = np.datetime64("2024-01-01T00:00", "ns") + steps * np.timedelta64(1, "m")
    return Series("svc/cpu", stamps, values.astype(float), metric, "svc/cpu.csv")


def failures(item: Series, min_length: int = 10) -> dict[str, dict[str, object]]:
    (result,) = validate([item], Rules(min_length=min_length)).results
    return {f"{failure['expectation']}:{failure['column']}": failure for failure in result.failures}


def test_clean_series_passes() -> None:
    report = validate([series(np.linspace(10, 20, 50))], Rules(min_length=10))
    assert report.success and report.summary()["failed"] == []


def test_out_of_order_and_duplicated_timestamps() -> None:
    minutes = np.arange(20) * 5
    minutes[7], minutes[12] = minutes[6], minutes[10]  # line 9 repeats line 8; line 14 goes back
    found = failures(series(np.ones(20), minutes=minutes))
    assert {row["line"] for row in found["expect_column_values_to_be_unique:timestamp"]["rows"]} >= {8, 9}
    assert [row["line"] for row in found["expect_column_values_to_be_increasing:timestamp"]["rows"]] == [9, 14]


def test_unparsable_timestamp() -> None:
    item = series(np.ones(20))
    item.timestamps[3] = np.datetime64("NaT")
    found = failures(item)
    assert found["expect_column_values_to_not_be_null:timestamp"]["rows"][0]["line"] == 5


def test_missing_text_and_infinite_values() -> None:
    values = np.ones(20)
    values[2], values[4] = np.nan, np.inf
    found = failures(series(values))
    assert found["expect_column_values_to_not_be_null:value"]["rows"][0]["line"] == 4
    between = found["expect_column_values_to_be_between:value"]
    assert between["rows"][0]["line"] == 6 and "cpu_percent" in str(between["problem"])


def test_implausible_values_per_metric_kind() -> None:
    found = failures(series(np.full(20, 250.0), metric="requests_per_s"))
    assert found == {}
    found = failures(series(np.full(20, -3.0), metric="latency_p95_ms"))
    assert "expect_column_values_to_be_between:value" in found


def test_gap_over_the_limit() -> None:
    minutes = np.arange(20) * 5
    minutes[10:] += 5 * 20  # a gap of 21 steps between lines 11 and 12
    found = failures(series(np.ones(20), minutes=minutes))
    assert found["expect_column_values_to_be_between:step_ratio"]["rows"][0]["line"] == 12


def test_too_short_and_the_message() -> None:
    (result,) = validate([series(np.ones(5))], Rules(min_length=300)).results
    assert not result.success
    message = result.message()
    assert message.startswith("svc/cpu.csv: failed validation")
    assert "too short: needs at least 300 points" in message and "it has 5" in message
