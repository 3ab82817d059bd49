"""The optimizer service: the app, crash recovery at start-up, usage sampling, ``python -m actuators.optimizer``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from actuators.optimizer.api import router
from actuators.optimizer.optimizer import Optimizer
from tmsops import __version__
from tmsops.app import add_health_check, create_app
from tmsops.health import HealthCheck
from tmsops.metrics_source import PrometheusSource
from tmsops.model_client import ModelClient
from tmsops.scrape_metrics import ScrapeMetric, scrape_registry
from tmsops.settings import OptimizerSettings
from tmsops.targets.base import Target
from tmsops.targets.factory import open_target

RECOVERY_RETRY_S = 30.0


def build_app(settings: OptimizerSettings, *, target: Target | None = None, sample_usage: bool = True) -> FastAPI:
    """The optimizer on the configured target (or ``target``); ``sample_usage`` polls the target's usage
    and analyses the cache in the background."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        acting_on = target or open_target(settings, caller="optimizer", tokens=app.state.tokens)
        metrics = PrometheusSource.from_settings(settings)
        models = ModelClient(settings.model_server_url, timeout_s=5.0, retries=1, breaker_reset_s=15.0)
        optimizer = Optimizer(settings, app.state.engine, target=acting_on, metrics=metrics, models=models)
        app.state.optimizer = optimizer
        app.state.metrics.include(scrape_registry([_changes_metric(optimizer)]))
        if sample_usage:
            optimizer.sampler.start()
            optimizer.cache.start()
        recovery = asyncio.create_task(_recover_until_done(optimizer))
        try:
            yield
        finally:
            recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recovery
            await optimizer.close()
            await models.aclose()
            await metrics.aclose()
            if target is None:
                await acting_on.aclose()

    app = create_app("optimizer", settings, version=__version__, lifespan=lifespan)
    app.include_router(router())
    add_health_check(app, _recovery_check(app))
    add_health_check(app, _database_check(app))
    add_health_check(app, _cache_check(app))
    return app


def _changes_metric(optimizer: Optimizer) -> ScrapeMetric:
    return ScrapeMetric(
        "tmsops_optimizer_changes",
        "Journalled changes by kind and status: kept, rolled_back, failed, dry_run, or applying and measuring",
        ("kind", "status"),
        lambda: {key: float(count) for key, count in optimizer.journal.counts().items()},
    )


async def _recover_until_done(optimizer: Optimizer) -> None:
    """Roll back what a crash left; what cannot be reached yet is retried every 30 s."""
    await optimizer.recover()
    while optimizer.pending_recovery:
        await asyncio.sleep(RECOVERY_RETRY_S)
        await optimizer.recover()


def _recovery_check(app: FastAPI) -> HealthCheck:
    async def probe() -> str:
        pending = app.state.optimizer.pending_recovery
        if pending:
            names = ", ".join(f"{entry.id} ({entry.subject})" for entry in pending)
            raise RuntimeError(f"changes interrupted by a crash, not rolled back yet: {names}")
        return "no interrupted change"

    return HealthCheck("crash recovery", probe, critical=False)


def _database_check(app: FastAPI) -> HealthCheck:
    """Not critical: without its database the optimizer still serves the cache and resources."""

    async def probe() -> str:
        return await app.state.optimizer.database_health()

    return HealthCheck("database", probe, critical=False, timeout_s=6.0)


def _cache_check(app: FastAPI) -> HealthCheck:
    async def probe() -> str:
        return await app.state.optimizer.cache_health()

    return HealthCheck("cache", probe, critical=False, timeout_s=6.0)


def main() -> None:
    import uvicorn

    from tmsops.settings import load_settings

    settings = load_settings(OptimizerSettings)
    print(f"tmsops optimizer: http://{settings.host}:{settings.port}", flush=True)
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port, log_level="warning")
