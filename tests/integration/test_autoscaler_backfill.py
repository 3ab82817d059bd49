"""The autoscaler reads a new service's demand history from a real Prometheus and forecasts at once.

Prometheus holds four hours of a service's request counter (written as TSDB blocks with
``promtool``, as a Prometheus that has scraped the service all along would): a demand falling
steadily from 30 to 10 requests/s. At five-minute steps the forecaster's context (48 steps) would
take four hours to fill live; with the backfill the loop forecasts on its first cycles, and each
step read back is that step's own mean demand (read with a five-minute window, where the
configured metrics window is one minute).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from conftest import find_prometheus, start_prometheus, stop_process, tail
from support.net import free_port
from support.registry import CONTEXT

from actuators.autoscaler.loop import Autoscaler
from actuators.autoscaler.records import DecisionStore
from tmsops.fleet.supervisor import Fleet
from tmsops.metrics_source import PrometheusSource
from tmsops.model_client import ModelClient
from tmsops.settings import AutoscalerSettings, FleetConfig, FleetService
from tmsops.state import make_engine

pytestmark = pytest.mark.anyio
STEP = timedelta(minutes=5)
HISTORY = timedelta(hours=4, minutes=30)
SAMPLE_S = 15
HIGH, LOW = 30.0, 10.0


def demand_at(age_s: float) -> float:
    """Requests/s ``age_s`` seconds before the history ends: a steady fall from HIGH to LOW."""
    return LOW + (HIGH - LOW) * age_s / HISTORY.total_seconds()


def write_history(end: datetime, path: Path) -> None:
    """The counter as OpenMetrics, every SAMPLE_S seconds: the exact integral of ``demand_at``."""
    span = HISTORY.total_seconds()
    lines = ["# HELP tmsops_proxy_requests Requests answered", "# TYPE tmsops_proxy_requests counter"]
    for offset in range(0, int(span) + 1, SAMPLE_S):
        age = span - offset
        total = LOW * offset + (HIGH - LOW) * (span**2 - age**2) / (2 * span)
        stamp = end.timestamp() - age
        lines.append(f'tmsops_proxy_requests_total{{service="echo"}} {total:.6f} {stamp:.3f}')
    path.write_text("\n".join([*lines, "# EOF", ""]))


@pytest.fixture
async def prometheus_with_history(tmp_path: Path) -> AsyncIterator[tuple[str, datetime]]:
    """Prometheus holding the history; its URL and when the history ends."""
    binary = find_prometheus()
    promtool = shutil.which("promtool") or str(Path(binary).with_name("promtool"))
    history = tmp_path / "history.om"
    end = datetime.now(UTC) - timedelta(seconds=30)
    write_history(end, history)
    blocks = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(history), str(tmp_path / "tsdb")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert blocks.returncode == 0, blocks.stderr
    process, base_url = start_prometheus(binary, tmp_path, free_port())  # nothing listens: only the history
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=2.0) as client:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, tail(tmp_path / "prometheus.log")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/-/ready")).status_code == 200:
                        break
                assert time.monotonic() < deadline, tail(tmp_path / "prometheus.log")
                await asyncio.sleep(0.2)
        yield base_url, end
    finally:
        stop_process(process)


async def watching(tmp_path: Path, prometheus_url: str, model_server_url: str, cycles: int) -> Autoscaler:
    """An autoscaler on a fleet with an idle echo service, after ``cycles`` decision cycles."""
    echo = FleetService(command=["{python}", "-m", "tmsops.fleet.echo"], port=free_port(), cpu_request="100m")
    fleet = Fleet(FleetConfig(services={"echo": echo}, usage_interval=0.5), state_dir=tmp_path)
    settings = AutoscalerSettings(
        state_dir=tmp_path,
        model_server_url=model_server_url,
        prometheus_url=prometheus_url,
        scaling={"mode": "forecastOnly", "interval": 0.2, "forecastStep": "5m"},
    )
    store = DecisionStore(make_engine(f"sqlite:///{tmp_path / 'decisions.db'}"))
    await fleet.start()
    try:
        async with (
            ModelClient(model_server_url, retries=1) as models,
            PrometheusSource.from_settings(settings) as source,
        ):
            scaler = Autoscaler(settings, fleet, models, store, source)
            for _ in range(cycles):
                await scaler.tick()
                await asyncio.sleep(0.2)
            await scaler.close()
    finally:
        await fleet.stop()
    return scaler


async def test_a_new_service_gets_its_history_from_prometheus_and_a_forecast_at_once(
    tmp_path: Path, prometheus_with_history: tuple[str, datetime], model_server_url: str
) -> None:
    prometheus_url, history_end = prometheus_with_history
    scaler = await watching(tmp_path, prometheus_url, model_server_url, cycles=6)
    state = scaler.services["echo"]
    assert state.backfill == f"{CONTEXT} steps of history from Prometheus"
    assert state.forecast is not None and scaler.forecast_problem(state) is None

    # Each step read back is the mean demand of that step: the steps end where the loop's own begin.
    assert state.history.step_end is not None
    live_start = time.time() - time.monotonic() + state.history.step_end
    for index, value in enumerate(list(state.history.points)[:CONTEXT]):
        middle = live_start - (CONTEXT - index - 0.5) * STEP.total_seconds()
        expected = demand_at(history_end.timestamp() - middle)
        # half a step off would be 0.6% (at 30/s) to 1.8% (at 10/s) off
        assert value == pytest.approx(expected, rel=0.003), (index, value, expected)


async def test_without_prometheus_the_loop_says_why_it_has_no_forecast_yet(
    tmp_path: Path, model_server_url: str
) -> None:
    scaler = await watching(tmp_path, f"http://127.0.0.1:{free_port()}", model_server_url, cycles=5)
    state = scaler.services["echo"]
    assert state.backfill is not None and state.backfill.startswith("no history from Prometheus: ")
    assert state.backfill.endswith("trying again in 60 s") and state.backfill_at is not None
    problem = scaler.forecast_problem(state)
    assert problem is not None and "more steps of demand history needed (no history from Prometheus" in problem
