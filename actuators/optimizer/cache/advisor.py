"""The cache advisor: reads a Redis, samples its traffic, and recommends size, policy and TTLs.

``await CacheAdvisor.from_settings(settings.optimization.cache).analyze()`` returns a
:class:`CacheReport`: the server's figures, a sample of its keys (sizes, TTLs, patterns,
big keys), the sampled trace's counts, the hit-rate curves and the recommendation. Nothing
is changed on the server: :mod:`actuators.optimizer.cache.apply` applies a recommendation.

The recommended ``maxmemory`` for a size of ``C`` keys is (:mod:`actuators.optimizer.cache.memory`)::

    bytes_per_key = (used_memory_dataset + hash-table overhead - bucket arrays) / keys
    fixed_bytes   = used_memory - mem_not_counted_for_evict - keys * bytes_per_key
    maxmemory     = fixed_bytes + C * bytes_per_key

measured before MONITOR starts (its output buffer counts in ``used_memory``).

Errors (see :mod:`actuators.optimizer.cache.connection`): :class:`CacheSettingsInvalid`
(422) for a missing or bad ``redisUrl``, :class:`RedisUnavailable` (503) when the server
cannot be reached, :class:`RedisRefused` (409) when it refuses MONITOR or INFO.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import TracebackType

from pydantic import BaseModel

from actuators.optimizer.cache.connection import connect, describe, redis_errors_wrapped
from actuators.optimizer.cache.memory import memory_model
from actuators.optimizer.cache.mrc import (
    CurvePoint,
    MissRatioCurve,
    Policy,
    SkewEstimate,
    lru_curve,
    reuse_profile,
    size_for_hit_rate,
    zipf_alpha,
)
from actuators.optimizer.cache.recommend import (
    POLICY_OF,
    CacheRecommendation,
    MemoryRecommendation,
    PolicyRecommendation,
    Strategy,
    choose_policy,
    memory_recommendation,
    recommend_ttls,
    simulated_curve,
    smallest_size_reaching,
)
from actuators.optimizer.cache.sampler import MonitorSampler, Trace, TraceCounts
from actuators.optimizer.cache.stats import KeyspaceSample, RedisStats, read_stats, sample_keys
from tmsops.settings import CacheOptimization

MIN_SAMPLED_READS = 1000
# The size aims this far above the target: the simulated curve's sampling error (about 0.2 points at
# R = 0.1) and the client buffers Redis counts in used_memory (about 1% of the keys' memory) both
# cost a fraction of a point.
DEFAULT_MARGIN = 0.005


class CacheReport(BaseModel):
    """What :meth:`CacheAdvisor.analyze` found. ``window_hit_rate`` is the hit rate of the sampled
    window (INFO deltas); ``curves`` holds the exact LRU curve and Redis's simulated policies."""

    service: str
    redis: str
    analyzed_at: datetime
    window_s: float
    stats: RedisStats
    window_hit_rate: float | None
    keyspace: KeyspaceSample
    trace: TraceCounts
    skew: SkewEstimate | None
    curves: list[MissRatioCurve]
    recommendation: CacheRecommendation


class CacheAdvisor:
    """Analyses one Redis; use as ``async with CacheAdvisor(url) as advisor: report = await advisor.analyze()``."""

    def __init__(
        self,
        redis_url: str | None,
        *,
        service: str = "cache",
        target_hit_rate: float = 0.9,
        sample_rate: float = 0.1,
        sample_window_s: float = 30.0,
        strategy: Strategy = "adaptive",
        max_ttl_s: float = 3600.0,
        max_events: int = 1_000_000,
        max_sampled_keys: int = 1000,
        margin: float = DEFAULT_MARGIN,
    ) -> None:
        self._client = connect(redis_url)
        self._where = describe(redis_url or "")
        self.service = service
        self.target_hit_rate = target_hit_rate
        self.sample_rate = sample_rate
        self.sample_window_s = sample_window_s
        self.strategy = strategy
        self.max_ttl_s = max_ttl_s
        self.max_events = max_events
        self.max_sampled_keys = max_sampled_keys
        self.margin = margin
        self._sampler: MonitorSampler | None = None

    @classmethod
    def from_settings(cls, settings: CacheOptimization) -> CacheAdvisor:
        url = settings.redis_url.get_secret_value() if settings.redis_url is not None else None
        return cls(
            url,
            service=settings.service,
            target_hit_rate=settings.target_hit_rate,
            sample_rate=settings.sample_rate,
            sample_window_s=settings.sample_window.total_seconds(),
            strategy=settings.strategy,
            max_ttl_s=settings.ttl.total_seconds(),
        )

    async def __aenter__(self) -> CacheAdvisor:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def stats(self) -> RedisStats:
        with redis_errors_wrapped("read INFO", self._where):
            return await read_stats(self._client)

    def stop_sampling(self) -> None:
        """End the sampling window of a running :meth:`analyze` early (it then analyses what it has)."""
        if self._sampler is not None:
            self._sampler.stop()

    async def analyze(self, window_s: float | None = None) -> CacheReport:
        """Sample the traffic for ``window_s`` (default: the configured window) and recommend."""
        window = self.sample_window_s if window_s is None else window_s
        with redis_errors_wrapped("sample the keys", self._where):
            before = await read_stats(self._client)
            keyspace = await sample_keys(self._client, before.maxmemory_policy, self.max_sampled_keys)
            before = await read_stats(self._client)
        self._sampler = MonitorSampler(self._client, rate=self.sample_rate, max_events=self.max_events)
        try:
            with redis_errors_wrapped("sample the command stream with MONITOR", self._where):
                trace = await self._sampler.run(window)
        finally:
            self._sampler = None
        with redis_errors_wrapped("read INFO", self._where):
            after = await read_stats(self._client)
        curves, skew, recommendation = await asyncio.to_thread(self._recommend, trace, before, keyspace, window)
        lookups = (after.keyspace_hits - before.keyspace_hits) + (after.keyspace_misses - before.keyspace_misses)
        return CacheReport(
            service=self.service,
            redis=self._where,
            analyzed_at=datetime.now(UTC),
            window_s=window,
            stats=before,
            window_hit_rate=(after.keyspace_hits - before.keyspace_hits) / lookups if lookups > 0 else None,
            keyspace=keyspace,
            trace=trace.counts(),
            skew=skew,
            curves=curves,
            recommendation=recommendation,
        )

    def _recommend(
        self, trace: Trace, stats: RedisStats, keyspace: KeyspaceSample, window_s: float
    ) -> tuple[list[MissRatioCurve], SkewEstimate | None, CacheRecommendation]:
        return recommend_from_trace(
            trace,
            stats,
            keyspace,
            target=self.target_hit_rate,
            strategy=self.strategy,
            max_ttl_s=self.max_ttl_s,
            window_s=window_s,
            margin=self.margin,
        )


def recommend_from_trace(
    trace: Trace,
    stats: RedisStats,
    keyspace: KeyspaceSample,
    *,
    target: float,
    strategy: Strategy,
    max_ttl_s: float,
    window_s: float,
    margin: float = DEFAULT_MARGIN,
) -> tuple[list[MissRatioCurve], SkewEstimate | None, CacheRecommendation]:
    """The curves, the skew and the recommendation for a sampled trace (CPU-bound: seconds for 1e6 accesses).

    The recommended size is the smallest simulated one reaching ``target + margin``.
    """
    counts = trace.counts()
    notes = _notes(counts, stats)
    profile = reuse_profile(trace)
    exact = lru_curve(profile)
    skew = zipf_alpha(trace.stream_key_counts or profile.access_counts.tolist())
    modes: list[Policy] = ["lru", "lfu"] if strategy == "adaptive" else ["lfu" if strategy == "lfu" else "lru"]
    aim = min(target + margin, 0.999)
    simulated = _simulated(trace, exact, modes, aim) if counts.sampled_reads >= MIN_SAMPLED_READS else []
    curves = [exact, *simulated]
    reaching = {curve.policy: smallest_size_reaching(curve, aim) for curve in simulated}
    no_ttl = keyspace.ttl.no_ttl / keyspace.sampled if keyspace.sampled else None
    mode, policy = choose_policy(strategy, skew, reaching, no_ttl)
    memory = _memory(reaching.get(mode), target, stats, keyspace, notes, curves, mode)
    ttls = recommend_ttls(profile, window_s, max_ttl_s)
    recommendation = CacheRecommendation(
        target_hit_rate=target, strategy=strategy, policy=policy, memory=memory, ttls=ttls, notes=notes
    )
    return curves, skew, recommendation


def _notes(counts: TraceCounts, stats: RedisStats) -> list[str]:
    notes = []
    if counts.sampled_reads < MIN_SAMPLED_READS:
        notes.append(
            f"only {counts.sampled_reads} sampled reads: too few for a reliable curve; "
            "sample longer or at a higher rate"
        )
    if counts.stopped_by == "lag":
        notes.append("sampling stopped early: the MONITOR reader fell behind the server")
    if stats.role != "master":
        notes.append(f"this server is a {stats.role}: apply the memory settings on its primary")
    return notes


def _simulated(trace: Trace, exact: MissRatioCurve, modes: list[Policy], aim: float) -> list[MissRatioCurve]:
    """Redis's policies simulated around the size where exact LRU reaches ``aim``."""
    around = size_for_hit_rate(exact, aim) or exact.max_size_keys
    if around <= 0:
        return []
    return [simulated_curve(trace, mode, around, aim, exact.distinct_keys) for mode in modes]


def _memory(
    point: CurvePoint | None,
    target: float,
    stats: RedisStats,
    keyspace: KeyspaceSample,
    notes: list[str],
    curves: list[MissRatioCurve],
    mode: Policy,
) -> MemoryRecommendation | None:
    model = memory_model(stats, keyspace)
    if model is None:
        notes.append("the server holds no keys: no size to measure bytes per key on")
        return None
    if point is None:
        simulated = next((curve for curve in curves if curve.model == "simulation" and curve.policy == mode), None)
        best = max((p.hit_rate for p in simulated.points), default=0.0) if simulated else 0.0
        notes.append(
            f"no size the window can tell reaches the target hit rate {target:.0%} with {POLICY_OF[mode]} "
            f"(best seen {best:.1%}): sample a longer window, or the misses are of keys read only once"
        )
        return None
    return memory_recommendation(point, target, model, stats)


__all__ = ["CacheAdvisor", "CacheReport", "PolicyRecommendation", "recommend_from_trace"]
