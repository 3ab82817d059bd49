"""The autoscaler service: the app, its control loop in the background, and ``python -m actuators.autoscaler``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from actuators.autoscaler.api import router
from actuators.autoscaler.loop import Autoscaler
from actuators.autoscaler.metrics import autoscaler_metrics
from actuators.autoscaler.records import DecisionStore
from tmsops import __version__
from tmsops.app import add_health_check, create_app
from tmsops.health import HealthCheck
from tmsops.metrics_source import PrometheusSource
from tmsops.model_client import ModelClient
from tmsops.scrape_metrics import scrape_registry
from tmsops.settings import AutoscalerSettings
from tmsops.targets.base import Target
from tmsops.targets.factory import open_target


def build_app(settings: AutoscalerSettings, *, target: Target | None = None, run_loop: bool = True) -> FastAPI:
    """The autoscaler on the configured target (or ``target``); ``run_loop`` starts the control loop."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        acting_on = target or open_target(settings, caller="autoscaler", tokens=app.state.tokens)
        # Demand from Prometheus where the target counts no requests itself, and history before the start
        metrics = PrometheusSource.from_settings(settings)
        models = ModelClient(settings.model_server_url, timeout_s=5.0, retries=1, breaker_reset_s=15.0)
        scaler = Autoscaler(settings, acting_on, models, DecisionStore(app.state.engine), metrics)
        app.state.autoscaler = scaler
        app.state.metrics.include(scrape_registry(autoscaler_metrics(scaler)))
        loop = asyncio.create_task(scaler.run()) if run_loop else None
        try:
            yield
        finally:
            if loop is not None:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
            await scaler.close()
            await models.aclose()
            await metrics.aclose()
            if target is None:
                await acting_on.aclose()

    app = create_app("autoscaler", settings, version=__version__, lifespan=lifespan)
    app.include_router(router())
    add_health_check(app, _forecasts_check(app))
    add_health_check(app, _loop_check(app, settings))
    return app


def _forecasts_check(app: FastAPI) -> HealthCheck:
    """Not critical: without forecasts the loop decides reactively (degraded)."""

    async def probe() -> str:
        error = app.state.autoscaler.model.error
        if error is not None:
            raise RuntimeError(f"reactive only: {error}")
        return "forecasts available"

    return HealthCheck("forecasts", probe, critical=False)


def _loop_check(app: FastAPI, settings: AutoscalerSettings) -> HealthCheck:
    """Not critical: the last tick is at most three intervals old."""
    interval_s = settings.scaling.interval.total_seconds()

    async def probe() -> str:
        last = app.state.autoscaler.last_tick_at
        if last is None:
            return "no tick yet"
        age = time.monotonic() - last
        if age > 3 * interval_s + 5:
            raise RuntimeError(f"last tick {age:.0f} s ago")
        return f"last tick {age:.1f} s ago"

    return HealthCheck("control loop", probe, critical=False)


def main() -> None:
    import uvicorn

    from tmsops.settings import load_settings

    settings = load_settings(AutoscalerSettings)
    print(f"tmsops autoscaler: http://{settings.host}:{settings.port} (mode {settings.scaling.mode})", flush=True)
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port, log_level="warning")
