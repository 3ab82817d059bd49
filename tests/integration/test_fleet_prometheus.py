"""A real Prometheus scrapes the real fleet's control API; the metrics source reads the traffic back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from conftest import find_prometheus, start_prometheus, stop_process
from support.net import free_port, served

from tmsops.fleet.api import build_app
from tmsops.metrics_source import MetricsUnavailable, PrometheusSource, ServiceSnapshot
from tmsops.promql import PromqlTemplates
from tmsops.settings import FleetConfig, FleetService, FleetSettings

pytestmark = [pytest.mark.anyio, pytest.mark.xdist_group("fleet")]
RATE_RPS = 20
SLEEP_MS = 30  # each echo answer takes 30 ms: its latency falls in the (25 ms, 50 ms] bucket
WINDOW = timedelta(seconds=10)


@pytest.fixture
async def fleet_url(tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    """The fleet's control API (which serves /metrics) and the echo service's port."""
    echo = FleetService(command=["{python}", "-m", "tmsops.fleet.echo"], port=free_port(), replicas=2)
    config = FleetConfig(control_port=free_port(), services={"echo": echo}, usage_interval=1)
    async with served(build_app(FleetSettings(state_dir=tmp_path, fleet=config)), config.control_port):
        yield f"127.0.0.1:{config.control_port}", echo.port


async def steady_load(port: int, stop: asyncio.Event) -> int:
    sent = 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        begin = time.perf_counter()
        tasks = []
        while not stop.is_set():
            tasks.append(asyncio.create_task(client.get(f"/echo?sleep_ms={SLEEP_MS}")))
            sent += 1
            await asyncio.sleep(max(0.0, begin + sent / RATE_RPS - time.perf_counter()))
        answers = await asyncio.gather(*tasks)
    assert {answer.status_code for answer in answers} == {200}
    return sent


async def test_prometheus_scrapes_the_fleet_and_the_source_reads_rate_and_latency(
    fleet_url: tuple[str, int], tmp_path: Path
) -> None:
    control, echo_port = fleet_url
    stop = asyncio.Event()
    load = asyncio.create_task(steady_load(echo_port, stop))
    prometheus, base_url = start_prometheus(find_prometheus(), tmp_path, control, job="tmsops-fleet")
    try:
        templates = PromqlTemplates.fleet(window=WINDOW)
        async with PrometheusSource(base_url, timeout_s=10, templates=templates) as source:
            snapshot = await _after_a_full_window(source)
    finally:
        stop.set()
        await load
        await asyncio.to_thread(stop_process, prometheus)
    assert snapshot.requests_per_second == pytest.approx(RATE_RPS, rel=0.25)
    assert snapshot.p95_latency_ms is not None and 25 < snapshot.p95_latency_ms <= 50
    assert snapshot.error_rate == 0
    assert snapshot.ready_replicas == 2
    assert snapshot.memory_bytes is not None and snapshot.memory_bytes > 10 * 2**20


async def _after_a_full_window(source: PrometheusSource) -> ServiceSnapshot:
    """The echo service's snapshot once Prometheus holds more than a rate window of scrapes."""
    query = 'count_over_time(tmsops_proxy_requests_total{service="echo",code="200"}[1m])'
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with_history = await _count(source, query)
        if with_history > WINDOW.total_seconds() + 3:
            return await source.service_snapshot("echo")
        await asyncio.sleep(0.5)
    pytest.fail("prometheus did not scrape the fleet within 60 s")


async def _count(source: PrometheusSource, query: str) -> float:
    try:
        samples = await source.query(query)
    except MetricsUnavailable:  # Prometheus still starting
        return 0.0
    return samples[0].value if samples else 0.0
