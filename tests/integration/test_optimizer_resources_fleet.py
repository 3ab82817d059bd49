"""Right-sizing and route metrics on a real fleet: the demo tracking-service as real processes.

The sampler reads the fleet's real usage; a recommendation made from it is planned (dry run),
applied (journalled, kept once the fleet reports it) and rolled back. The proxy's route
metrics are read from the fleet's own registry; the last test reads them (and the usage
history) back through a real Prometheus scraping the fleet's control API.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from conftest import find_prometheus, start_prometheus, stop_process
from sqlalchemy import create_engine
from support.net import free_port, served

from actuators.optimizer.journal import OptimizationJournal, Status
from actuators.optimizer.network import network_report
from actuators.optimizer.resources import (
    NotEnoughData,
    UnsafeResources,
    apply_resources,
    recommend_resources,
    rollback_resources,
)
from actuators.optimizer.usage import UsageSampler, UsageWindow, collect_usage
from tmsops.fleet.api import build_app
from tmsops.fleet.supervisor import Fleet
from tmsops.metrics_source import MetricsUnavailable, PrometheusSource
from tmsops.promql import PromqlTemplates
from tmsops.settings import FleetConfig, FleetService, FleetSettings, ResourceOptimization, demo_fleet

pytestmark = [pytest.mark.anyio, pytest.mark.xdist_group("fleet")]
SERVICE = "tracking-service"
MI = 2**20
MIN_SAMPLES = 20


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    tracking = demo_fleet()[SERVICE].model_copy(update={"port": free_port(), "replicas": 2})
    config = FleetConfig(control_port=free_port(), services={SERVICE: tracking}, usage_interval=0.2)
    fleet = Fleet(config, state_dir=tmp_path)
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


@pytest.fixture
def journal(tmp_path: Path) -> OptimizationJournal:
    return OptimizationJournal(create_engine(f"sqlite:///{tmp_path / 'optimizer.db'}"))


def base_url(fleet: Fleet, service: str = SERVICE) -> str:
    return f"http://127.0.0.1:{fleet.config.services[service].port}"


async def sampled_under_load(fleet: Fleet, samples: int) -> UsageWindow:
    """Real requests through the proxy while the sampler polls, until it holds ``samples`` samples."""
    sampler = UsageSampler(fleet, services=[SERVICE], interval=timedelta(seconds=0.1))
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=base_url(fleet), timeout=10) as client:
        while time.monotonic() < deadline:
            answers = await asyncio.gather(*(client.get(f"/tracking/{index}") for index in range(1, 11)))
            assert {answer.status_code for answer in answers} == {200}
            await sampler.sample_once()
            window = sampler.window(SERVICE)
            if len(window.samples) >= samples and window.demand:
                return window
            await asyncio.sleep(0.1)
    pytest.fail(f"the sampler did not collect {samples} samples within 60 s")


async def test_a_recommendation_from_real_usage_is_planned_applied_and_rolled_back(
    fleet: Fleet, journal: OptimizationJournal
) -> None:
    window = await sampled_under_load(fleet, 2 * MIN_SAMPLES)
    status = await fleet.service(SERVICE)
    before = status.resources
    recommendation = recommend_resources(
        window, before, status.replicas, ResourceOptimization(), min_samples=MIN_SAMPLES
    )
    assert recommendation.enough_data and recommendation.recommended is not None
    recommended = recommendation.recommended
    assert window.replicas_seen == 2 and window.demand
    assert recommendation.usage.memory_bytes_max is not None and recommendation.usage.memory_bytes_max > 10 * MI
    assert recommended.memory_limit == recommended.memory_request
    assert recommended.memory_limit is not None and recommended.memory_limit > recommendation.usage.memory_bytes_max
    assert recommended.cpu_request is not None and recommended.cpu_request >= 0.01
    assert recommendation.savings is not None and recommendation.savings.cpu_cores is not None

    planned = await apply_resources(fleet, journal, SERVICE, recommendation, dry_run=True)
    assert planned.status is Status.DRY_RUN
    assert planned.after is not None and planned.after["resources"]["memory_limit"] == recommended.memory_limit
    assert (await fleet.service(SERVICE)).resources == before

    kept = await apply_resources(fleet, journal, SERVICE, recommendation, poll_interval_s=0.1)
    assert kept.status is Status.KEPT, kept.reason
    assert kept.undo == before.model_dump(exclude_none=True)
    now = (await fleet.service(SERVICE)).resources
    assert (now.cpu_request, now.memory_request, now.memory_limit) == (
        recommended.cpu_request,
        recommended.memory_request,
        recommended.memory_limit,
    )
    assert (await fleet.usage(SERVICE)).resources == now

    restored = await rollback_resources(fleet, kept, journal, reason="test")
    assert restored.resources == before
    assert (await fleet.service(SERVICE)).resources == before
    assert journal.get(kept.id).status is Status.ROLLED_BACK
    assert [entry.status for entry in journal.recent()] == [Status.ROLLED_BACK, Status.DRY_RUN]


async def test_safe_mode_refuses_a_memory_limit_below_the_usage_seen_and_changes_nothing(
    fleet: Fleet, journal: OptimizationJournal
) -> None:
    window = await sampled_under_load(fleet, MIN_SAMPLES)
    status = await fleet.service(SERVICE)
    recommendation = recommend_resources(window, status.resources, status.replicas, min_samples=MIN_SAMPLES)
    assert recommendation.recommended is not None
    too_small = recommendation.recommended.model_copy(update={"memory_limit": 4 * MI})
    with pytest.raises(
        UnsafeResources, match=r"safe mode: the memory limit 4Mi of tracking-service is below"
    ) as refused:
        await apply_resources(fleet, journal, SERVICE, recommendation.model_copy(update={"recommended": too_small}))
    assert refused.value.http_status == 409
    empty = recommend_resources(UsageWindow(service=SERVICE, source="sampler"), status.resources, status.replicas)
    with pytest.raises(NotEnoughData) as not_enough:
        await apply_resources(fleet, journal, SERVICE, empty, dry_run=True)
    assert not_enough.value.http_status == 409
    assert journal.recent() == []
    assert (await fleet.service(SERVICE)).resources == status.resources


async def test_the_proxy_counts_requests_per_normalised_route(fleet: Fleet) -> None:
    async with httpx.AsyncClient(base_url=base_url(fleet), timeout=10) as client:
        for path in ("/tracking/1", "/tracking/22?verbose=1", "/tracking/abc", "/health"):
            await client.get(path)
    registry, labels = fleet.metrics.registry, {"service": SERVICE}

    def requests(route: str, code: str) -> float | None:
        return registry.get_sample_value("tmsops_proxy_route_requests_total", {**labels, "route": route, "code": code})

    assert requests("GET /tracking/{id}", "200") == 2
    assert requests("GET /tracking/abc", "404") == 1
    assert requests("GET /health", "200") == 1
    observed = {**labels, "route": "GET /tracking/{id}"}
    assert registry.get_sample_value("tmsops_proxy_route_request_duration_seconds_count", observed) == 2
    assert registry.get_sample_value("tmsops_proxy_requests_total", {**labels, "code": "200"}) == 3
    assert registry.get_sample_value("tmsops_proxy_request_duration_seconds_count", labels) == 4
    assert registry.get_sample_value("tmsops_proxy_client_connections_total", labels) == 1  # one kept-alive client
    assert (registry.get_sample_value("tmsops_proxy_upstream_connections_total", labels) or 0) >= 1


ECHO_WINDOW = timedelta(seconds=5)
SLEEP_MS = 30


@pytest.fixture
async def control_api(tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    """The fleet's control API (serving /metrics) with an echo service of two replicas; its address and echo's port."""
    echo = FleetService(command=["{python}", "-m", "tmsops.fleet.echo"], port=free_port(), replicas=2)
    config = FleetConfig(control_port=free_port(), services={"echo": echo}, usage_interval=1)
    async with served(build_app(FleetSettings(state_dir=tmp_path, fleet=config)), config.control_port):
        yield f"127.0.0.1:{config.control_port}", echo.port


async def load(port: int, stop: asyncio.Event) -> None:
    """``GET /echo`` (30 ms each) and ``GET /bytes/`` through the proxy, over one kept-alive client."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        while not stop.is_set():
            answers = await asyncio.gather(client.get(f"/echo?sleep_ms={SLEEP_MS}"), client.get("/bytes?n=10"))
            assert {answer.status_code for answer in answers} == {200}


async def test_prometheus_reads_route_latency_and_usage_history_from_the_fleet(
    control_api: tuple[str, int], tmp_path: Path
) -> None:
    address, echo_port = control_api
    stop = asyncio.Event()
    running = asyncio.create_task(load(echo_port, stop))
    prometheus, url = start_prometheus(find_prometheus(), tmp_path, address, job="tmsops-fleet")
    try:
        async with PrometheusSource(url, timeout_s=10, templates=PromqlTemplates.fleet(window=ECHO_WINDOW)) as source:
            await _a_full_window_scraped(source)
            report = await network_report(source, "echo", window=ECHO_WINDOW)
            usage = await collect_usage(
                "echo", prometheus=source, lookback=timedelta(seconds=30), step=timedelta(seconds=1)
            )
    finally:
        stop.set()
        await running
        await asyncio.to_thread(stop_process, prometheus)
    routes = {item.route: item for item in report.routes}
    assert set(routes) == {"GET /echo", "GET /bytes"}
    echo = routes["GET /echo"]
    assert echo.p95_ms is not None and 25 < echo.p95_ms <= 50
    assert echo.error_rate == 0 and echo.requests_per_second > 0
    assert report.hot_spots[0].route == "GET /echo"  # 30 ms answers take most of the time
    assert report.timeout_ms is not None and report.timeout_ms >= 2 * SLEEP_MS
    assert not [advice for advice in report.advice if advice.kind == "connection_reuse"]  # one kept-alive client
    assert usage.source == "prometheus" and usage.samples
    assert all(sample.memory_bytes > 10 * MI for sample in usage.samples)  # per replica, not the sum of two
    assert usage.restarts == 0 and usage.demand


async def _a_full_window_scraped(source: PrometheusSource) -> None:
    query = 'count_over_time(tmsops_proxy_route_requests_total{service="echo",route="GET /echo",code="200"}[1m])'
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            found = await source.query(query)
        except MetricsUnavailable:  # Prometheus still starting
            found = []
        if found and found[0].value > ECHO_WINDOW.total_seconds() + 3:
            return
        await asyncio.sleep(0.5)
    pytest.fail("prometheus did not scrape the fleet within 60 s")
