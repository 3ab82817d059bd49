"""From a sampled trace and the server's figures to recommendations: size, eviction policy, TTLs.

- **Size.** The exact LRU curve (reuse distances) locates the size for the target hit rate;
  Redis's own approximate policy is then simulated on the sampled trace around that size
  (a grid, then bisection) and the recommended size is the smallest simulated one that
  reaches the target plus a small margin (the advisor's ``margin``, half a point by
  default). ``predicted_hit_rate`` is the simulated hit rate at that size. The size in keys
  becomes ``maxmemory`` bytes with :mod:`actuators.optimizer.cache.memory`.
- **Policy.** ``lru`` / ``lfu`` force ``allkeys-lru`` / ``allkeys-lfu``; ``ttl`` keeps
  ``allkeys-lru`` for eviction and relies on the TTLs; ``adaptive`` picks LFU when the
  popularity is skewed (Zipf alpha >= 0.7, where access counts tell hot keys from cold
  ones) and the simulations confirm LFU needs no more memory than LRU for the target,
  LRU otherwise (flat or shifting popularity, where recency is the better signal).
- **TTLs.** Per key pattern, a TTL covering the 95th percentile of the reuse intervals
  seen, capped by the configured ``ttl``; when that percentile reaches half the window,
  longer intervals are unobservable and the configured ``ttl`` is kept.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel

from actuators.optimizer.cache.memory import MemoryModel
from actuators.optimizer.cache.mrc import (
    CurvePoint,
    MissRatioCurve,
    Policy,
    ReuseProfile,
    SkewEstimate,
    monotone,
)
from actuators.optimizer.cache.redis_sim import simulate_hit_rate
from actuators.optimizer.cache.sampler import Trace
from actuators.optimizer.cache.stats import RedisStats, key_pattern

EvictionPolicy = Literal[
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
]
Strategy = Literal["lru", "lfu", "ttl", "adaptive"]

LFU_MIN_ALPHA = 0.7
GRID_FACTORS = (0.6, 0.8, 1.0, 1.25, 1.6, 2.0)
BISECTION_STEPS = 4
MAX_SIMULATED_ACCESSES = 200_000
MIN_REUSES_FOR_TTL = 20
TTL_PERCENTILE = 95
TOP_TTL_PATTERNS = 20
POLICY_OF: dict[Policy, EvictionPolicy] = {"lru": "allkeys-lru", "lfu": "allkeys-lfu"}


class PolicyRecommendation(BaseModel):
    policy: EvictionPolicy
    reason: str


class MemoryRecommendation(BaseModel):
    """``maxmemory_bytes`` holds ``size_keys`` keys; ``predicted_hit_rate`` is Redis's simulated hit rate there."""

    maxmemory_bytes: int
    size_keys: int
    predicted_hit_rate: float
    meets_target: bool
    bytes_per_key: float
    fixed_bytes: int
    bytes_per_key_source: str
    current_maxmemory: int
    used_memory: int


class TtlRecommendation(BaseModel):
    pattern: str
    ttl_s: int
    p95_reuse_s: float
    sampled_reads: int
    reuses: int
    reason: str


class CacheRecommendation(BaseModel):
    target_hit_rate: float
    strategy: Strategy
    policy: PolicyRecommendation
    memory: MemoryRecommendation | None
    ttls: list[TtlRecommendation]
    notes: list[str]


def simulated_curve(trace: Trace, mode: Policy, around: int, target: float, max_size: int) -> MissRatioCurve:
    """Redis's ``mode`` simulated on a grid around ``around`` keys, then bisected to the target."""
    trace = trace.resampled_to(MAX_SIMULATED_ACCESSES)
    results: dict[int, float] = {}

    def simulate(size: int) -> bool:
        if size in results:
            return True
        result = simulate_hit_rate(trace, size, mode) if 0 < size <= max_size else None
        if result is not None:
            results[size] = result[0]
        return result is not None

    for factor in GRID_FACTORS:
        if not simulate(max(1, round(around * factor))) and factor >= 1:
            break
    for _ in range(BISECTION_STEPS):
        bracket = _bracket(_curve_points(results), target)
        if bracket is None or bracket[1] - bracket[0] <= 1:
            break
        simulate((bracket[0] + bracket[1]) // 2)
    points = _curve_points(results)
    return MissRatioCurve(
        policy=mode,
        model="simulation",
        rate=trace.rate,
        points=points,
        sampled_reads=len(trace),
        total_reads=trace.seen_reads,
        distinct_keys=round(len(set(trace.keys)) / trace.rate),
        max_size_keys=max(results, default=0),
    )


def _curve_points(results: dict[int, float]) -> list[CurvePoint]:
    return monotone([CurvePoint(size_keys=size, hit_rate=rate) for size, rate in sorted(results.items())])


def _bracket(points: list[CurvePoint], target: float) -> tuple[int, int] | None:
    """The largest simulated size below the target (0 if none) and the smallest one reaching it."""
    reaching = [point.size_keys for point in points if point.hit_rate >= target]
    if not reaching:
        return None
    high = min(reaching)
    return max((point.size_keys for point in points if point.size_keys < high), default=0), high


def smallest_size_reaching(curve: MissRatioCurve, target: float) -> CurvePoint | None:
    """The smallest point of the curve at or above the target (a simulated size, not interpolated)."""
    return next((point for point in curve.points if point.hit_rate >= target), None)


def choose_policy(
    strategy: Strategy,
    skew: SkewEstimate | None,
    sizes: dict[Policy, CurvePoint | None],
    keys_without_ttl_share: float | None,
) -> tuple[Policy, PolicyRecommendation]:
    if strategy in ("lru", "lfu"):
        mode: Policy = strategy
        reason = f"forced by optimization.cache.strategy={strategy}"
        return mode, PolicyRecommendation(policy=POLICY_OF[mode], reason=reason)
    if strategy == "ttl":
        share = (
            "" if keys_without_ttl_share is None else f"; {keys_without_ttl_share:.0%} of the sampled keys have none"
        )
        return "lru", PolicyRecommendation(
            policy="allkeys-lru",
            reason="strategy ttl: keys expire by the recommended TTLs and LRU evicts what memory still cannot hold "
            f"(volatile-ttl would refuse writes once keys without a TTL fill the memory{share})",
        )
    if skew is None:
        return "lru", PolicyRecommendation(
            policy="allkeys-lru", reason="adaptive: too few repeated keys to estimate the skew; LRU is the safe default"
        )
    lru, lfu = sizes.get("lru"), sizes.get("lfu")
    compared = f"LFU reaches the target with {lfu.size_keys} keys, LRU with {lru.size_keys}" if lru and lfu else ""
    if skew.alpha < LFU_MIN_ALPHA:
        return "lru", PolicyRecommendation(
            policy="allkeys-lru",
            reason=f"adaptive: popularity is not skewed enough for access counts to tell hot from cold keys "
            f"(Zipf alpha {skew.alpha:.2f} < {LFU_MIN_ALPHA}); recency (LRU) is the better signal"
            + (f"; {compared}" if compared else ""),
        )
    if lfu is not None and (lru is None or lfu.size_keys <= lru.size_keys):
        return "lfu", PolicyRecommendation(
            policy="allkeys-lfu",
            reason=f"adaptive: skewed, stable popularity (Zipf alpha {skew.alpha:.2f}): access counts keep the hot "
            "set cached" + (f"; {compared}" if compared else "; LRU does not reach the target in the window"),
        )
    if lru is not None:
        return "lru", PolicyRecommendation(
            policy="allkeys-lru",
            reason=f"adaptive: popularity is skewed (Zipf alpha {skew.alpha:.2f}) but shifts: LRU needs less memory"
            + (f"; {compared}" if compared else "; LFU does not reach the target in the window"),
        )
    return "lfu", PolicyRecommendation(
        policy="allkeys-lfu",
        reason=f"adaptive: skewed popularity (Zipf alpha {skew.alpha:.2f}) favours access counts; "
        "neither policy reaches the target within what the window can tell",
    )


def memory_recommendation(
    point: CurvePoint, target: float, model: MemoryModel, stats: RedisStats
) -> MemoryRecommendation:
    return MemoryRecommendation(
        maxmemory_bytes=model.maxmemory_for(point.size_keys),
        size_keys=point.size_keys,
        predicted_hit_rate=point.hit_rate,
        meets_target=point.hit_rate >= target,
        bytes_per_key=model.bytes_per_key,
        fixed_bytes=model.fixed_bytes,
        bytes_per_key_source=model.source,
        current_maxmemory=stats.maxmemory,
        used_memory=stats.used_memory,
    )


def recommend_ttls(profile: ReuseProfile, window_s: float, max_ttl_s: float) -> list[TtlRecommendation]:
    """Per key pattern (most read first): a TTL covering the p95 reuse interval, at most ``max_ttl_s``."""
    if not len(profile.key_index):
        return []
    names = [key_pattern(key) for key in profile.keys]
    codes = {name: code for code, name in enumerate(dict.fromkeys(names))}
    pattern_of_read = np.asarray([codes[name] for name in names], dtype=np.int64)[profile.key_index]
    reads = np.bincount(pattern_of_read, minlength=len(codes))
    cap = max(1, math.floor(max_ttl_s))
    recommendations = []
    for name, code in sorted(codes.items(), key=lambda item: -reads[item[1]])[:TOP_TTL_PATTERNS]:
        times = profile.reuse_time[pattern_of_read == code]
        intervals = times[~np.isnan(times)]
        if len(intervals) < MIN_REUSES_FOR_TTL:
            continue
        p95 = float(np.percentile(intervals, TTL_PERCENTILE))
        share = len(intervals) / len(times)
        if p95 >= window_s / 2:
            ttl = cap
            reason = (
                f"p95 reuse interval {p95:.1f} s reaches half the {window_s:.0f} s window: longer intervals "
                "are not observable, so the configured ttl is kept"
            )
        else:
            ttl = min(cap, max(1, math.ceil(round(p95, 3))))
            reason = (
                f"covers 95% of the {len(intervals)} reuse intervals seen (p95 {p95:.1f} s); {share:.0%} of the "
                "pattern's sampled reads re-read a key within the window"
                + (" (capped by the configured ttl)" if ttl == cap and p95 > cap else "")
            )
        recommendations.append(
            TtlRecommendation(
                pattern=name,
                ttl_s=ttl,
                p95_reuse_s=round(p95, 3),
                sampled_reads=int(reads[code]),
                reuses=len(intervals),
                reason=reason,
            )
        )
    return recommendations
