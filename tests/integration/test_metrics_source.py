"""PrometheusSource against a real Prometheus scraping a real process that exports the fleet's metric names."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from conftest import find_prometheus, sample_count, spawn, start_prometheus, stop_process, tail
from support import fleet_exporter
from support.fleet_exporter import SERVICES, WEIRD

from tmsops.metrics_source import PrometheusSource, QueryError, Sample, ServiceSnapshot
from tmsops.promql import PromqlTemplates
from tmsops.settings import CoreSettings

pytestmark = [pytest.mark.xdist_group("prometheus"), pytest.mark.anyio]

WINDOW = timedelta(seconds=10)
STEP = timedelta(seconds=1)
# Samples of history (one a second) before the tests run: every point of a range of HISTORY_S
# ending a second ago then has a full rate WINDOW of data behind it.
HISTORY_S = 4
_SAMPLES_BEFORE_READY = int(WINDOW.total_seconds()) + HISTORY_S + 3
_STARTUP_DEADLINE_S = 60.0
ORDERS = SERVICES["orders"]


def _start_fleet_exporter(tmp: Path) -> tuple[subprocess.Popen[str], int]:
    log = tmp / "fleet-exporter.log"
    process = spawn([sys.executable, fleet_exporter.__file__], log, capture_stdout=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.isdigit():
        stop_process(process)
        pytest.fail(f"the fleet exporter did not start: {line!r}\n{tail(log)}", pytrace=False)
    return process, int(line)


def _wait_for_history(process: subprocess.Popen[str], base_url: str, log: Path) -> None:
    query = 'count_over_time(tmsops_proxy_requests_total{service="orders",code="200"}[1m])'
    deadline = time.monotonic() + _STARTUP_DEADLINE_S
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited with code {process.returncode}:\n{tail(log)}", pytrace=False)
            if sample_count(client, base_url, query) >= _SAMPLES_BEFORE_READY:
                return
            time.sleep(0.25)
    pytest.fail(f"prometheus did not scrape the fleet exporter within {_STARTUP_DEADLINE_S} s:\n{tail(log)}")


@pytest.fixture(scope="session")
def fleet_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real Prometheus scraping the fleet exporter every second, with enough history for rates."""
    binary = find_prometheus()
    tmp = tmp_path_factory.mktemp("fleet-prometheus")
    exporter, exporter_port = _start_fleet_exporter(tmp)
    try:
        server, base_url = start_prometheus(binary, tmp, exporter_port)
        try:
            _wait_for_history(server, base_url, tmp / "prometheus.log")
            yield base_url
        finally:
            stop_process(server)
    finally:
        stop_process(exporter)


@pytest.fixture
async def source(fleet_prometheus: str) -> AsyncIterator[PrometheusSource]:
    templates = PromqlTemplates.fleet(window=WINDOW)
    async with PrometheusSource(fleet_prometheus, timeout_s=10.0, templates=templates) as opened:
        yield opened


def _values(snapshot: ServiceSnapshot) -> dict[str, object]:
    return snapshot.model_dump(exclude={"service", "at"})


def _recent(seconds: int) -> tuple[datetime, datetime]:
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    return end - timedelta(seconds=seconds), end


async def test_snapshot_of_orders_matches_what_the_process_exports(source: PrometheusSource) -> None:
    snapshot = await source.service_snapshot("orders")

    assert snapshot.service == "orders"
    assert snapshot.at.tzinfo is not None
    assert snapshot.requests_per_second == pytest.approx(ORDERS.requests_per_s, rel=0.2)
    assert snapshot.error_rate == pytest.approx(ORDERS.errors_per_s / ORDERS.requests_per_s, abs=0.04)
    assert snapshot.p95_latency_ms is not None
    assert 25.0 < snapshot.p95_latency_ms <= 50.0  # observations of 40 ms fall in the (25 ms, 50 ms] bucket
    assert snapshot.cpu_cores == ORDERS.cpu_cores
    assert snapshot.memory_bytes == ORDERS.memory_bytes
    assert snapshot.ready_replicas == ORDERS.ready_replicas


async def test_a_service_without_5xx_series_has_an_error_rate_of_zero(source: PrometheusSource) -> None:
    snapshot = await source.service_snapshot("billing")

    assert snapshot.error_rate == 0.0
    assert snapshot.p95_latency_ms is not None
    assert 150.0 < snapshot.p95_latency_ms <= 250.0


async def test_an_unknown_service_has_no_values(source: PrometheusSource) -> None:
    snapshot = await source.service_snapshot("nobody")

    assert _values(snapshot) == dict.fromkeys(_values(snapshot))


async def test_a_service_name_with_a_quote_and_a_backslash_is_matched_exactly(source: PrometheusSource) -> None:
    snapshot = await source.service_snapshot(WEIRD)

    assert snapshot.cpu_cores == SERVICES[WEIRD].cpu_cores
    assert snapshot.requests_per_second == pytest.approx(SERVICES[WEIRD].requests_per_s, rel=0.3)
    assert (await source.service_snapshot('we"ird')).cpu_cores is None


async def test_query_range_returns_points_oldest_first(source: PrometheusSource) -> None:
    start, end = _recent(8)

    series = await source.query_range('tmsops_fleet_cpu_cores{service="orders"}', start, end, STEP)

    assert len(series) == 1
    assert series[0].labels["service"] == "orders"
    times = [moment for moment, _ in series[0].points]
    assert len(times) >= 5
    assert times == sorted(times) and times[0] >= start and times[-1] <= end
    assert {value for _, value in series[0].points} == {ORDERS.cpu_cores}


async def test_service_history_of_the_request_rate(source: PrometheusSource) -> None:
    start, end = _recent(HISTORY_S)

    points = await source.service_history("orders", "requestsPerSecond", start, end, STEP)

    assert [moment for moment, _ in points] == [start + i * STEP for i in range(HISTORY_S + 1)]
    assert [value for _, value in points] == pytest.approx([ORDERS.requests_per_s] * len(points), rel=0.2)


async def test_service_history_of_an_unknown_service_is_empty(source: PrometheusSource) -> None:
    start, end = _recent(5)

    assert await source.service_history("nobody", "memory_bytes", start, end, STEP) == []


async def test_scalars_nan_and_inf_are_kept(source: PrometheusSource) -> None:
    assert await source.query("1 + 1") == [Sample(labels={}, value=2.0)]
    assert math.isnan((await source.query("0 / 0"))[0].value)
    assert (await source.query("-1 / 0"))[0].value == -math.inf


async def test_an_instant_query_in_the_past(source: PrometheusSource) -> None:
    samples = await source.query(
        'tmsops_fleet_memory_bytes{service="orders"}', datetime.now(UTC) - timedelta(seconds=5)
    )

    assert [sample.value for sample in samples] == [ORDERS.memory_bytes]


async def test_prometheus_refuses_a_bad_query(source: PrometheusSource) -> None:
    with pytest.raises(QueryError) as caught:
        await source.query("sum(")

    assert caught.value.error_type == "bad_data"
    assert caught.value.query == "sum("
    assert "sum(" in str(caught.value) and "parse error" in str(caught.value)


async def test_every_kubernetes_template_is_valid_promql(fleet_prometheus: str) -> None:
    templates = PromqlTemplates.kubernetes(window=WINDOW, namespace='sh"op')
    async with PrometheusSource(fleet_prometheus, timeout_s=10.0, templates=templates) as kubernetes:
        snapshot = await kubernetes.service_snapshot(WEIRD + ".*(")

    assert _values(snapshot) == dict.fromkeys(_values(snapshot))


async def test_from_settings(fleet_prometheus: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("TMSOPS_")]:
        monkeypatch.delenv(name)
    settings = CoreSettings(prometheus_url=fleet_prometheus, metrics={"window": "10s", "timeout": "5s"})

    async with PrometheusSource.from_settings(settings) as configured:
        snapshot = await configured.service_snapshot("orders")

    assert snapshot.memory_bytes == ORDERS.memory_bytes
    assert snapshot.requests_per_second == pytest.approx(ORDERS.requests_per_s, rel=0.2)
