"""The cache part of the optimizer service: a periodic analysis in the background, measured changes.

Analysing a cache means watching its traffic for ``sampleWindow`` (30 s by default), too long
for a GET: a background task analyses every ``REFRESH_S`` and the read routes answer with the
latest report. ``POST /optimization/cache`` analyses afresh, then applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from actuators.optimizer.cache.advisor import CacheAdvisor, CacheReport
from actuators.optimizer.cache.apply import CacheChange, apply_change, rollback
from actuators.optimizer.cache.stats import RedisStats
from actuators.optimizer.journal import Optimization, OptimizationJournal
from actuators.optimizer.overview import Bottleneck
from tmsops.errors import TemporaryError, TmsopsError
from tmsops.settings import CacheOptimization

log = logging.getLogger(__name__)
REFRESH_S = 600.0
MAX_FRAGMENTATION = 1.5


class CacheAnalysisPending(TemporaryError):
    http_status = 503


class CacheOptimizer:
    def __init__(self, policy: CacheOptimization, journal: OptimizationJournal, lock: asyncio.Lock) -> None:
        self.policy = policy
        self.journal = journal
        self.lock = lock  # the optimizer's: the background analysis does not run while a change is measured
        self.url = policy.redis_url.get_secret_value() if policy.redis_url is not None else None
        self.latest: CacheReport | None = None
        self.latest_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Analyse now and every ``REFRESH_S`` in the background (only when a Redis is configured)."""
        if self.url is not None and self._task is None:
            self._task = asyncio.create_task(self._refresh_forever())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def analyze(self) -> CacheReport:
        """The latest background analysis (without a Redis configured: the configuration error)."""
        if self.url is None:
            async with CacheAdvisor.from_settings(self.policy):
                pass  # raises the error that names the missing setting
        if self.latest is None:
            why = f"the last one failed: {self.latest_error}" if self.latest_error else "it watches the traffic first"
            raise CacheAnalysisPending(f"no cache analysis yet ({why}); retry in a minute", retry_after=30.0)
        return self.latest

    async def analyze_now(self, target_hit_rate: float | None = None) -> CacheReport:
        policy = (
            self.policy
            if target_hit_rate is None
            else self.policy.model_copy(update={"target_hit_rate": target_hit_rate})
        )
        async with CacheAdvisor.from_settings(policy) as advisor:
            report = await advisor.analyze()
        self.latest, self.latest_error = report, None
        return report

    async def stats(self) -> RedisStats:
        async with CacheAdvisor.from_settings(self.policy) as advisor:
            return await advisor.stats()

    async def health(self) -> str:
        stats = await self.stats()
        ratio = f"{stats.hit_ratio:.1%}" if stats.hit_ratio is not None else "no lookups yet"
        return f"redis {stats.redis_version} ({stats.role}), hit ratio {ratio}"

    async def optimize(self, *, dry_run: bool, target_hit_rate: float | None = None) -> list[Optimization]:
        """Analyse afresh and apply the recommended size and eviction policy, measured (kept or restored)."""
        target = target_hit_rate if target_hit_rate is not None else self.policy.target_hit_rate
        report = await self.analyze_now(target)
        change = CacheChange.from_recommendation(report.recommendation)
        entry = await apply_change(
            self.journal,
            change,
            redis_url=self.url,
            service=self.policy.service,
            target_hit_rate=target,
            dry_run=dry_run,
            window_s=self.policy.sample_window.total_seconds(),
        )
        return [entry]

    async def rollback(self, entry: Optimization, reason: str) -> Optimization:
        return await rollback(self.journal, entry, redis_url=self.url, reason=reason)

    def bottlenecks(self, report: CacheReport) -> list[Bottleneck]:
        stats, target = report.stats, report.recommendation.target_hit_rate
        hit_rate = report.window_hit_rate if report.window_hit_rate is not None else stats.hit_ratio
        found = []
        if hit_rate is not None and hit_rate < target:
            memory = report.recommendation.memory
            found.append(
                Bottleneck(
                    part="cache",
                    service=self.policy.service,
                    subject=f"hit rate {hit_rate:.1%}",
                    score=round(min(1.0, target - hit_rate), 4),
                    detail=f"below the target {target:.0%}; {stats.evicted_keys} keys evicted since start",
                    recommendation=f"maxmemory {memory.maxmemory_bytes}, {report.recommendation.policy.policy}"
                    if memory is not None
                    else report.recommendation.policy.policy,
                )
            )
        if stats.mem_fragmentation_ratio is not None and stats.mem_fragmentation_ratio > MAX_FRAGMENTATION:
            found.append(
                Bottleneck(
                    part="cache",
                    service=self.policy.service,
                    subject="memory fragmentation",
                    score=0.2,
                    detail=f"fragmentation ratio {stats.mem_fragmentation_ratio:.2f}",
                    recommendation="CONFIG SET activedefrag yes",
                )
            )
        return found

    async def _refresh_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                async with self.lock:
                    await self.analyze_now()
            except TmsopsError as error:
                self.latest_error = error.message
                log.warning("cache analysis failed: %s", error.message)
            except Exception as error:  # a bug must not end the refreshes silently
                self.latest_error = repr(error)
                log.exception("cache analysis failed")
            await asyncio.sleep(max(1.0, REFRESH_S - (time.monotonic() - started)))
