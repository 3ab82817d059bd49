"""The optimizer: the database, cache, resource and network analyses and the journalled changes.

One change at a time: changes are serialised by a lock, so two changes never measure each
other's effect (an analysis asked for meanwhile, or the cache's background one, still adds its
own load to the measured system). At start-up, every change a crash left without a verdict is rolled back.
A part whose system is not configured or not reachable is reported as unavailable; the
other parts still answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine

from actuators.optimizer.cache.service import CacheOptimizer
from actuators.optimizer.database.advisor import DatabaseAdvice, advise
from actuators.optimizer.database.apply import apply_index, rollback_index
from actuators.optimizer.database.connection import Database, DatabaseNotConfigured
from actuators.optimizer.database.plans import Candidate
from actuators.optimizer.journal import UNFINISHED, Kind, Optimization, OptimizationJournal, Status
from actuators.optimizer.network import NetworkReport, network_report
from actuators.optimizer.overview import Bottleneck, ChangeCounts, Overview, Recommendations
from actuators.optimizer.resources import (
    ResourceRecommendation,
    apply_resources,
    forecast_peak,
    recommend_resources,
    rollback_resources,
)
from actuators.optimizer.usage import UsageSampler, collect_usage
from tmsops.errors import PermanentError, TmsopsError
from tmsops.metrics_source import PrometheusSource
from tmsops.model_client import ModelClient, SeriesIn
from tmsops.settings import OptimizerSettings, parse_duration
from tmsops.targets.base import Target
from tmsops.tracing import span

log = logging.getLogger(__name__)
T = TypeVar("T")
FORECAST_STEP = timedelta(minutes=5)


class NotApplicable(PermanentError):
    http_status = 409


class BadTimeRange(PermanentError):
    http_status = 422


@dataclass
class DatabaseResult:
    advice: DatabaseAdvice | None
    applied: list[Optimization]


class Optimizer:
    def __init__(
        self,
        settings: OptimizerSettings,
        engine: Engine,
        *,
        target: Target,
        metrics: PrometheusSource | None = None,
        models: ModelClient | None = None,
    ) -> None:
        self.settings = settings
        self.policy = settings.optimization
        self.journal = OptimizationJournal(engine)
        self.target = target
        self.metrics = metrics
        self.models = models
        self.lock = asyncio.Lock()
        self.sampler = UsageSampler(target)
        self.cache = CacheOptimizer(self.policy.cache, self.journal, self.lock)
        self._database: Database | None = None
        self.pending_recovery: list[Optimization] = []
        self.last_recommendations: Recommendations | None = None
        self.last_bottlenecks: list[Bottleneck] = []

    async def close(self) -> None:
        await self.sampler.stop()
        await self.cache.aclose()

    # -- database -------------------------------------------------------------------------------

    @property
    def database(self) -> Database:
        """The configured database; a missing or malformed DSN is reported where it is used (422)."""
        if self._database is None:
            dsn = self.policy.database.dsn
            if dsn is None:
                raise DatabaseNotConfigured()
            self._database = Database(
                dsn.get_secret_value(),
                statement_timeout=self.policy.database.statement_timeout,
                schemas=self.policy.database.schemas,
            )
        return self._database

    async def advise_database(self) -> DatabaseAdvice:
        return await advise(self.database, self.policy.database)

    async def optimize_database(self, *, dry_run: bool, indexes: list[Candidate] | None = None) -> DatabaseResult:
        """Apply ``indexes`` (default: the recommended ones) one by one, each measured and kept or dropped."""
        database = self.database
        async with self.lock, _applying("database", dry_run):
            advice = None
            if indexes is None:
                advice = await self.advise_database()
                indexes = [recommendation.candidate() for recommendation in advice.recommendations]
            service = self.policy.database.service
            applied = [
                await apply_index(database, self.journal, self.policy.database, index, service=service, dry_run=dry_run)
                for index in indexes
            ]
            return DatabaseResult(advice, applied)

    async def database_health(self) -> str:
        database = self.database
        async with database.connect() as session:
            missing = await database.check_extensions(session)
        if missing:
            raise RuntimeError(f"database {database.name!r} lacks {', '.join(missing)}")
        return f"database {database.name!r} reachable, extensions present"

    # -- cache ----------------------------------------------------------------------------------

    async def optimize_cache(self, *, dry_run: bool, target_hit_rate: float | None = None) -> list[Optimization]:
        async with self.lock, _applying("cache", dry_run):
            return await self.cache.optimize(dry_run=dry_run, target_hit_rate=target_hit_rate)

    async def cache_health(self) -> str:
        return await self.cache.health()

    # -- resources and network ------------------------------------------------------------------

    async def resource_recommendation(self, service: str) -> ResourceRecommendation:
        status = await self.target.service(service)
        window = await collect_usage(service, sampler=self.sampler, prometheus=self.metrics)
        peak = await self._predicted_peak(service)
        return recommend_resources(
            window, status.resources, status.replicas, self.policy.resources, predicted_peak_rps=peak
        )

    async def optimize_resources(self, service: str, *, dry_run: bool) -> Optimization:
        recommendation = await self.resource_recommendation(service)
        async with self.lock, _applying("resources", dry_run, service):
            return await apply_resources(
                self.target,
                self.journal,
                service,
                recommendation,
                dry_run=dry_run,
                safe_mode=self.policy.resources.safe_mode,
            )

    async def network(self, service: str, window: timedelta | None = None) -> NetworkReport:
        await self.target.service(service)
        if self.metrics is None:
            raise NotApplicable("no Prometheus configured (prometheusUrl): route latencies come from its histograms")
        return await network_report(self.metrics, service, window=window)

    async def _predicted_peak(self, service: str) -> float | None:
        """The forecaster's p90 peak of the service's demand, from a day of 5-minute history in Prometheus."""
        if self.metrics is None or self.models is None:
            return None
        try:
            info = await self.models.model_info()
            context = int(info.get("context", 288))
            end = datetime.now(UTC)
            points = await self.metrics.service_history(
                service, "requests_per_s", end - FORECAST_STEP * context, end, FORECAST_STEP
            )
            values = [value for _, value in points][-context:]
            if len(values) < context:
                return None
            [forecast] = await self.models.forecast(
                [SeriesIn(id=f"{service}/requests_per_s", values=values, step_s=FORECAST_STEP.total_seconds())]
            )
        except TmsopsError as error:
            log.info("no forecast for %s: %s", service, error.message)
            return None
        return forecast_peak(forecast)

    # -- everything at once ---------------------------------------------------------------------

    async def recommendations(self) -> Recommendations:
        found = Recommendations()
        found.database = await self._part("database", found.unavailable, self.advise_database)
        found.cache = await self._part("cache", found.unavailable, self.cache.analyze)
        for service in await self._services(found.unavailable):
            resources = await self._part(
                f"resources:{service}", found.unavailable, self.resource_recommendation, service
            )
            if resources is not None:
                found.resources.append(resources)
            network = await self._part(f"network:{service}", found.unavailable, self.network, service)
            if network is not None:
                found.network.append(network)
        self.last_recommendations = found
        return found

    async def overview(self, time_range: str) -> Overview:
        window = _time_range(time_range)
        found = Overview(time_range=time_range, changes=self._change_counts())
        advice = await self._part("database", found.unavailable, self.advise_database)
        if advice is not None:
            found.database = {
                "database": advice.database,
                "statements": advice.statements,
                "recommended_indexes": len(advice.recommendations),
                "estimated_read_cost_saving_pct": _saving(advice.read_cost_before, advice.read_cost_after),
                "index_findings": len(advice.findings),
                "slowest": [query.model_dump(exclude={"plan"}) for query in advice.slow_queries[:5]],
            }
        found.cache = await self._part("cache", found.unavailable, self.cache.stats)
        for service in await self._services(found.unavailable):
            window_usage = await self._part(
                f"resources:{service}", found.unavailable, self.resource_recommendation, service
            )
            if window_usage is not None:
                found.resources.append(window_usage.model_dump(mode="json", by_alias=True))
            network = await self._part(f"network:{service}", found.unavailable, self.network, service, window)
            if network is not None:
                found.network.append(
                    network.model_dump(
                        mode="json",
                        by_alias=True,
                        include={"service", "requests_per_second", "error_rate", "p95_ms", "p99_ms", "hot_spots"},
                    )
                )
        return found

    async def bottlenecks(self) -> list[Bottleneck]:
        found = await self.recommendations()
        ranked: list[Bottleneck] = []
        if found.database is not None:
            ranked += database_bottlenecks(found.database, self.policy.database.service)
        if found.cache is not None:
            ranked += self.cache.bottlenecks(found.cache)
        for resources in found.resources:
            ranked += resource_bottlenecks(resources)
        for network in found.network:
            ranked += network_bottlenecks(network)
        self.last_bottlenecks = sorted(ranked, key=lambda item: -item.score)
        return self.last_bottlenecks

    async def auto_optimize(self, service: str, scope: str, *, dry_run: bool) -> tuple[list[Optimization], list[str]]:
        """Every change the policy allows for ``service`` within ``scope``; what was not done, and why."""
        await self.target.service(service)
        applied: list[Optimization] = []
        skipped: list[str] = []
        if scope in ("all", "database"):
            if service != self.policy.database.service:
                skipped.append(f"database: it belongs to {self.policy.database.service}")
            elif not self.policy.database.auto_indexing and not dry_run:
                skipped.append("database: optimization.database.autoIndexing is off (recommendations only)")
            else:
                applied += await self._attempt("database", skipped, self._database_changes, dry_run)
        if scope in ("all", "cache"):
            if service != self.policy.cache.service:
                skipped.append(f"cache: it belongs to {self.policy.cache.service}")
            else:
                applied += await self._attempt("cache", skipped, self.optimize_cache, dry_run=dry_run)
        if scope in ("all", "resources"):
            change = await self._attempt("resources", skipped, self.optimize_resources, service, dry_run=dry_run)
            applied += [change] if isinstance(change, Optimization) else []
        return applied, skipped

    async def _database_changes(self, dry_run: bool) -> list[Optimization]:
        return (await self.optimize_database(dry_run=dry_run)).applied

    # -- rollback and recovery --------------------------------------------------------------------

    async def rollback(self, optimization_id: int) -> Optimization:
        """Take back a kept change."""
        async with self.lock:
            entry = self.journal.get(optimization_id)
            if entry.status != Status.KEPT:
                raise NotApplicable(
                    f"optimization {entry.id} is {entry.status.value}: only a kept change can be taken back"
                )
            return await self._undo(entry, "taken back on request")

    async def recover(self) -> list[Optimization]:
        """Roll back every change a crash left without a verdict; those that cannot be reached yet stay pending."""
        async with self.lock:
            done, pending = [], []
            for entry in self.journal.unfinished():
                try:
                    done.append(await self._undo(entry, "interrupted by a restart of the optimizer: rolled back"))
                except TmsopsError as error:
                    log.warning("optimization %d (%s) not rolled back yet: %s", entry.id, entry.subject, error.message)
                    pending.append(entry)
            self.pending_recovery = pending
            return done

    async def _undo(self, entry: Optimization, reason: str) -> Optimization:
        if entry.kind == Kind.INDEX:
            return await rollback_index(self.database, self.journal, entry, reason)
        if entry.kind == Kind.CACHE:
            return await self.cache.rollback(entry, reason)
        await rollback_resources(self.target, entry, self.journal, reason=reason)
        return self.journal.get(entry.id)

    # -- helpers --------------------------------------------------------------------------------

    def _change_counts(self) -> ChangeCounts:
        counts = ChangeCounts()
        for entry in self.journal.recent(limit=1000):
            if entry.status in UNFINISHED:
                counts.in_progress += 1
            else:
                setattr(counts, entry.status.value, getattr(counts, entry.status.value) + 1)
        return counts

    async def _services(self, unavailable: dict[str, str]) -> list[str]:
        try:
            return [status.name for status in await self.target.list_services()]
        except TmsopsError as error:
            unavailable["target"] = error.message
            return []

    async def _part(
        self, name: str, unavailable: dict[str, str], call: Callable[..., Awaitable[T]], *args: Any
    ) -> T | None:
        try:
            return await call(*args)
        except TmsopsError as error:
            unavailable[name] = error.message
            return None

    async def _attempt(
        self, name: str, skipped: list[str], call: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> Any:
        try:
            return await call(*args, **kwargs)
        except TmsopsError as error:
            if error.retryable:
                raise
            skipped.append(f"{name}: {error.message}")
            return []


@contextlib.asynccontextmanager
async def _applying(part: str, dry_run: bool, service: str | None = None) -> AsyncIterator[None]:
    """One span per apply (when tracing), taken once the change lock is held."""
    attributes: dict[str, str | bool] = {"tmsops.optimizer.part": part, "tmsops.dry_run": dry_run}
    if service is not None:
        attributes["tmsops.service"] = service
    with span("optimizer.apply", attributes):
        yield


def database_bottlenecks(advice: DatabaseAdvice, service: str) -> list[Bottleneck]:
    """The statements taking the most time, each with the index that would serve it, if any."""
    serving = {gain.queryid: item.definition for item in advice.recommendations for gain in item.queries}
    return [
        Bottleneck(
            part="database",
            service=service,
            subject=query.query[:300],
            score=round(query.share_pct / 100, 4),
            detail=f"{query.share_pct:.1f}% of database time; {query.calls} calls at {query.mean_ms:.2f} ms",
            recommendation=serving.get(query.queryid),
        )
        for query in advice.slow_queries
        if query.share_pct >= 5
    ]


def resource_bottlenecks(recommendation: ResourceRecommendation) -> list[Bottleneck]:
    usage, current = recommendation.usage, recommendation.current
    found = []
    if recommendation.out_of_memory:
        found.append(
            Bottleneck(
                part="resources",
                service=recommendation.service,
                subject="memory",
                score=0.9,
                detail=recommendation.reason,
                recommendation="raise the memory limit as recommended",
            )
        )
    if usage.cpu_cores_max and current.cpu_request and usage.cpu_cores_max > 0.9 * current.cpu_request:
        found.append(
            Bottleneck(
                part="resources",
                service=recommendation.service,
                subject="cpu",
                score=min(1.0, 0.5 * usage.cpu_cores_max / current.cpu_request),
                detail=f"peak CPU {usage.cpu_cores_max:.2f} cores against a request of {current.cpu_request:.2f}",
                recommendation=recommendation.reason,
            )
        )
    return found


def network_bottlenecks(report: NetworkReport) -> list[Bottleneck]:
    return [
        Bottleneck(
            part="network",
            service=report.service,
            subject=spot.route,
            score=round(spot.time_share, 4),
            detail=spot.why,
            recommendation=next((a.message for a in report.advice if a.route == spot.route), None),
        )
        for spot in report.hot_spots
    ]


def _saving(before: float, after: float) -> float:
    return round(100 * (1 - after / before), 1) if before > 0 else 0.0


def _time_range(text: str) -> timedelta:
    try:
        parsed = parse_duration(text.strip())
    except (OverflowError, ValueError):
        parsed = None
    if not isinstance(parsed, timedelta) or not timedelta(minutes=1) <= parsed <= timedelta(days=31):
        raise BadTimeRange(
            f"timeRange: {text!r} is not a duration between 1m and 31d such as 15m, 1h or 7d",
            details={"timeRange": text},
        )
    return parsed
