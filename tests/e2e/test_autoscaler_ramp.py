"""Live on the local fleet, a replayed daily ramp: predictive scaling acts before the demand crosses capacity.

A "day" here is 48 steps of 0.5 s (the test forecaster's context): a low demand, a steady
ramp to ten times as much, a plateau, back down. The forecaster is trained on each step's
mean demand of such days, as a user's would be on their own history. Day one fills the autoscaler's history; on day two
the predictive loop must decide to add a replica at least one measured start-up time before
the demand crosses what one replica serves at the CPU target, and the reactive loop (the HPA
rule alone, on the same fleet and traffic) only after it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import generate_latest
from support.model_server import model_server
from support.net import free_port
from support.registry import register_champions

from actuators.autoscaler.loop import Autoscaler
from actuators.autoscaler.metrics import autoscaler_metrics
from actuators.autoscaler.records import DecisionRecord, DecisionStore
from tmsops.fleet.supervisor import Fleet
from tmsops.model_client import ModelClient
from tmsops.scrape_metrics import scrape_registry
from tmsops.settings import AutoscalerSettings, FleetConfig, FleetService
from tmsops.state import make_engine
from training.series import Series

pytestmark = [pytest.mark.anyio, pytest.mark.xdist_group("autoscaler-ramp")]
PERIOD = 48
STEP_S = 0.5
BASE_RPS, PEAK_RPS = 4.0, 40.0
RAMP_START, RAMP_END, PLATEAU_END = 30, 42, 46
DAY_TWO_END = PERIOD + PLATEAU_END


def profile(step: float) -> float:
    """Requests/s at ``step`` (in steps since the start, fractions included) of the daily pattern."""
    phase = step % PERIOD
    if RAMP_START <= phase < RAMP_END:
        return BASE_RPS + (PEAK_RPS - BASE_RPS) * (phase - RAMP_START) / (RAMP_END - RAMP_START)
    return PEAK_RPS if RAMP_END <= phase < PLATEAU_END else BASE_RPS


def training_days(days: int = 30) -> list[Series]:
    rng = np.random.default_rng(7)
    steps = np.arange(days * PERIOD)
    stamps = np.datetime64("2026-01-05", "ns") + steps * np.timedelta64(5, "m")
    pattern = np.array([profile(step + 0.5) for step in steps])  # each step's mean demand
    return [
        Series(f"svc/{name}", stamps, scale * pattern + rng.normal(0, noise, len(steps)), "requests_per_s")
        for name, scale, noise in (("orders", 1.0, 0.8), ("tracking", 2.5, 2.0), ("billing", 0.5, 0.4))
    ]


@pytest.fixture(scope="module")
def ramp_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("ramp-registry")
    uri = register_champions(root, series=training_days(), epochs=40, hidden=64)
    with model_server(uri, root / "serve.log") as base:
        yield base


@dataclass
class Run:
    started_wall: float
    records: list[DecisionRecord]
    exposition: str  # the autoscaler's own metrics at the end, as Prometheus would scrape them

    def crossing_at(self, decision: DecisionRecord) -> float:
        """Wall time at which day two's demand first exceeds what one replica serves at the CPU target,
        as the loop had learned it when it took ``decision``."""
        capacity = decision.inputs["capacity_per_replica"]
        assert capacity is not None, "the loop never learned a replica's capacity"
        assert BASE_RPS < capacity < PEAK_RPS, f"one replica serves {capacity:.1f}/s: the ramp never crosses it"
        crossed = RAMP_START + (RAMP_END - RAMP_START) * (capacity - BASE_RPS) / (PEAK_RPS - BASE_RPS)
        return self.started_wall + (PERIOD + crossed) * STEP_S

    def first_scale_up_on_day_two(self) -> DecisionRecord:
        day_two = self.started_wall + (PERIOD + RAMP_START - 10) * STEP_S
        ups = [
            record
            for record in self.records
            if record.applied and record.desired > record.current and record.at.timestamp() >= day_two
        ]
        assert ups, "no scale-up on day two"
        return min(ups, key=lambda record: record.at)


def startup_known_at(record: DecisionRecord) -> float:
    """The replica start-up time the loop had measured when it took ``record``'s decision.

    The lead time is that start-up time plus one interval (the next decision comes one interval
    later). The moving average at the end of the run can differ: later scale-ups, on a busier
    machine, take longer.
    """
    return float(record.inputs["lead_time_s"]) - STEP_S


async def replay(port: int, started: float) -> None:
    """Requests evenly spaced at the pattern's rate, open loop, until the end of day two's plateau."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        pending = []
        next_at = started
        while (step := (next_at - started) / STEP_S) < DAY_TWO_END:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            pending.append(asyncio.create_task(client.get(f"/tracking/{len(pending) + 1}")))
            next_at += 1 / profile(step)
        answers = await asyncio.gather(*pending, return_exceptions=True)
    failed = [answer for answer in answers if isinstance(answer, Exception) or answer.status_code != 200]
    assert len(failed) <= len(answers) * 0.05, failed[:3]


async def run_day_two(tmp_path: Path, model_url: str, weight: float) -> Run:
    tracking = FleetService(
        command=["{python}", "-m", "tmsops.demo.tracking"],
        port=free_port(),
        env={"CPU_MS": "5", "SERVICE_TIME_MS": "10", "SERVICE_TIME_SIGMA": "0"},
        max_replicas=6,
        cpu_request="100m",
    )
    # CPU averaged over two-second windows, as the HPA reads utilisation averaged by metrics-server:
    # at a few requests per second a shorter window is mostly noise.
    fleet = Fleet(FleetConfig(services={"tracking": tracking}, usage_interval=2.0), state_dir=tmp_path)
    scaling = {
        "mode": "forecastAndScale",
        "interval": STEP_S,
        "forecastStep": STEP_S,
        "predictionWeight": weight,
        "stabilizationWindow": 5,
        "maxReplicas": 6,
        "startupTime": 2,
    }
    settings = AutoscalerSettings(state_dir=tmp_path, model_server_url=model_url, scaling=scaling)
    store = DecisionStore(make_engine(f"sqlite:///{tmp_path / 'decisions.db'}"))
    await fleet.start()
    async with ModelClient(model_url, retries=1) as models:
        scaler = Autoscaler(settings, fleet, models, store)
        started, started_wall = time.monotonic(), time.time()
        loop = asyncio.create_task(scaler.run())
        try:
            await replay(tracking.port, started)
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
            await scaler.close()
            await fleet.stop()
    exposition = generate_latest(scrape_registry(autoscaler_metrics(scaler))).decode()
    return Run(started_wall, store.recent(limit=10_000), exposition)


async def test_predictive_scales_a_start_up_time_before_the_ramp_crosses_capacity_and_reactive_after(
    ramp_models: str, tmp_path: Path
) -> None:
    predictive = await run_day_two(tmp_path / "predictive", ramp_models, weight=1.0)
    reactive = await run_day_two(tmp_path / "reactive", ramp_models, weight=0.0)

    ahead = predictive.first_scale_up_on_day_two()
    assert ahead.at.timestamp() <= predictive.crossing_at(ahead) - startup_known_at(ahead)
    behind = reactive.first_scale_up_on_day_two()
    assert behind.at.timestamp() > reactive.crossing_at(behind)
    applied = [r for r in predictive.records if r.source == "loop" and r.applied and r.desired != r.current]
    assert f'tmsops_autoscaler_loop_changes_total{{outcome="applied",service="tracking"}} {float(len(applied))}' in (
        predictive.exposition
    )
    forecast_used = [record for record in predictive.records if record.predictive is not None]
    assert forecast_used and not math.isnan(forecast_used[0].inputs["forecast_peak"])
