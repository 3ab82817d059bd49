"""The chaos service: the app, crash recovery at start-up, and ``python -m chaos``.

At start-up the service reverts, in the background, every fault the journal shows injected
and not reverted (``GET /health`` reports it until done); at shutdown it aborts and rolls back
every running experiment. The allow and deny lists of services are constructor arguments
(``allow=None`` admits every service).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager

from fastapi import FastAPI

from chaos.api import router
from chaos.journal import Journal
from chaos.probes import ProbeRunner
from chaos.runner import Runner
from chaos.safety import SafetyController, SafetyPolicy
from tmsops import __version__
from tmsops.app import add_health_check, create_app
from tmsops.health import HealthCheck
from tmsops.metrics_source import PrometheusSource
from tmsops.model_client import ModelClient
from tmsops.scrape_metrics import ScrapeMetric, Values, scrape_registry
from tmsops.settings import ChaosSettings
from tmsops.targets.base import Target
from tmsops.targets.factory import open_target

log = logging.getLogger("chaos")


def build_app(
    settings: ChaosSettings,
    *,
    target: Target | None = None,
    allow: Collection[str] | None = None,
    deny: Collection[str] = (),
    rng: random.Random | None = None,
) -> FastAPI:
    """The chaos service on the configured target (or ``target``)."""
    policy = SafetyPolicy.from_settings(settings.safety, allow=allow, deny=deny)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        acting_on = target or open_target(settings, caller="chaos", tokens=app.state.tokens)
        prometheus = PrometheusSource.from_settings(settings)
        models = ModelClient(settings.model_server_url, timeout_s=5.0, retries=1, breaker_reset_s=15.0)
        journal = Journal(app.state.engine)
        runner = Runner(acting_on, journal, SafetyController(policy, journal, rng), ProbeRunner(prometheus, models))
        app.state.runner = runner
        recovery = asyncio.create_task(_recover(runner), name="crash recovery")
        app.state.recovery = recovery
        try:
            yield
        finally:
            recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recovery
            await runner.close()
            await runner.probes.aclose()
            await models.aclose()
            await prometheus.aclose()
            if target is None:
                await acting_on.aclose()

    app = create_app("chaos", settings, version=__version__, lifespan=lifespan)
    app.include_router(router())
    app.state.metrics.include(scrape_registry(_chaos_metrics(app)))
    add_health_check(app, _recovery_check(app))
    add_health_check(app, _target_check(app))
    return app


async def _recover(runner: Runner) -> None:
    recovered = await runner.recover()
    if recovered:
        log.warning("crash recovery: aborted %s and reverted their faults", ", ".join(recovered))


def _recovery_check(app: FastAPI) -> HealthCheck:
    """Not critical: fails while faults left by a previous run are not confirmed reverted."""

    async def probe() -> str:
        runner: Runner = app.state.runner
        if not app.state.recovery.done() or runner.recovering:
            raise RuntimeError(f"reverting faults left by the last run: {', '.join(sorted(runner.recovering))}")
        open_injections = runner.journal.injections(open_only=True)
        unowned = [item.id for item in open_injections if item.experiment_id not in runner.runs]
        if unowned:
            raise RuntimeError(f"rollbacks not confirmed yet: injections {unowned}")
        return f"nothing left behind; {len(runner.runs)} experiments running"

    return HealthCheck("crash recovery", probe, critical=False)


def _target_check(app: FastAPI) -> HealthCheck:
    """Not critical: the target answers (without it nothing can be injected or reverted)."""

    async def probe() -> str:
        runner: Runner = app.state.runner
        services = await runner.target.list_services()
        return f"{runner.target.kind} target with {len(services)} services"

    return HealthCheck("target reachable", probe, critical=False)


def _chaos_metrics(app: FastAPI) -> list[ScrapeMetric]:
    def read(value: Callable[[Runner], Values]) -> Callable[[], Values]:
        def values() -> Values:
            runner: Runner | None = getattr(app.state, "runner", None)
            return value(runner) if runner is not None else {}

        return values

    return [
        ScrapeMetric("tmsops_chaos_running_experiments", "Experiments running", (), read(lambda r: {(): len(r.runs)})),
        ScrapeMetric(
            "tmsops_chaos_open_injections",
            "Injections not confirmed reverted",
            (),
            read(lambda r: {(): r.journal.open_injection_count()}),
        ),
        ScrapeMetric(
            "tmsops_chaos_emergency_stop_engaged",
            "1 while the stop is engaged",
            (),
            read(lambda r: {(): 1.0 if r.safety.engaged else 0.0}),
        ),
        ScrapeMetric(
            "tmsops_chaos_experiments",
            "Experiments by status: created, running, completed, deviated, aborted, failed",
            ("status",),
            read(lambda r: {(status,): count for status, count in r.journal.experiment_counts().items()}),
        ),
    ]


def main() -> None:
    import uvicorn

    from tmsops.settings import load_settings

    settings = load_settings(ChaosSettings)
    print(f"tmsops chaos: http://{settings.host}:{settings.port} (target {settings.target.kind})", flush=True)
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port, log_level="warning")
