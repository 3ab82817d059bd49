"""Hit rate as a function of cache size (in keys), from a spatially sampled trace.

LRU (the exact stack algorithm, Mattson et al. 1970, with SHARDS sampling, Waldspurger et
al., FAST'15): a read hits an LRU cache of ``C`` keys when fewer than ``C`` distinct keys
were accessed since the previous access to its key (its *reuse distance* ``d``, counted as
``d + 1`` slots). On a trace sampled at rate ``R``, ``d`` distinct sampled keys stand for
``d / R`` keys of the whole stream. Distances come from a Fenwick tree over the positions
of each key's last access: one prefix sum and two updates per access, O(n log n).

Two corrections make the estimate match a cache that has been running for a while:

- *cold reads*: the first read of a key in the window has no known distance. Its distance
  is at least the number of distinct keys seen before it, so once ``C`` distinct keys have
  been seen it is a miss in a cache of ``C`` keys. The hit rate at ``C`` is therefore taken
  over the reads after the first ``C`` distinct keys (estimated) of the window: the cold
  start of the window does not count as misses of a warm cache;
- *post-stratification* (in place of SHARDS_adj): with heavy-tailed popularity a handful of
  hot keys carry much of the traffic, and whether they fall in the sample swings the
  estimate by several points. The sampler counts the accesses of every key of the stream,
  so each sampled key is weighted by its popularity tier (:func:`key_weights`): the
  weighted sample has the stream's number of accesses in every tier.

Redis's own approximate LRU and LFU are estimated by simulation on the same sampled trace
(:mod:`actuators.optimizer.cache.redis_sim`).

The skew of the popularity (:func:`zipf_alpha`) is the slope of the rank-frequency line in
log-log scale; spatial sampling keeps that slope.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel

from actuators.optimizer.cache.sampler import Op, Trace

Policy = Literal["lru", "lfu"]

# A point of the curve needs this share of the sampled reads after its warm-up (and this many).
MIN_SCORED_SHARE = 0.1
MIN_SCORED_READS = 200
GRID_POINTS = 120


class CurvePoint(BaseModel):
    size_keys: int
    hit_rate: float


class MissRatioCurve(BaseModel):
    """Hit rate per cache size in keys, for the reads of the sampled window.

    ``model``: ``stack`` for exact LRU by reuse distances, ``simulation`` for Redis's
    approximate policy simulated on the sampled trace. ``max_size_keys`` is the largest
    size the window can tell (beyond it, too few reads came after the cache would have
    been warm); ``distinct_keys`` is the estimated number of keys the window touched.
    """

    policy: Policy
    model: Literal["stack", "simulation"]
    rate: float
    points: list[CurvePoint]
    sampled_reads: int
    total_reads: int
    distinct_keys: int
    max_size_keys: int

    @property
    def max_hit_rate(self) -> float:
        return max((point.hit_rate for point in self.points), default=0.0)


@dataclass(frozen=True)
class ReuseProfile:
    """Per sampled read: reuse distance in sampled keys (-1: no earlier access), reuse time in seconds
    (nan without one), distinct sampled keys seen before it, key index. Per sampled key: its name,
    accesses and weight (:func:`key_weights`)."""

    rate: float
    total_reads: int
    distance: NDArray[np.int64]
    reuse_time: NDArray[np.float64]
    distinct_before: NDArray[np.int64]
    key_index: NDArray[np.int64]
    keys: list[str]
    access_counts: NDArray[np.int64]
    weights: NDArray[np.float64]


def key_weights(trace: Trace) -> dict[str, float]:
    """How many accesses of the stream one access of each sampled key stands for (up to a common factor).

    Keys are grouped in popularity tiers (``2**t`` to ``2**(t+1) - 1`` accesses in the window);
    a tier's weight is the stream's accesses in it over the sample's. A tier without a sampled
    key joins the nearest tier that has one (the less popular on a tie). Without the stream's
    counts every key weighs the same (plain SHARDS).
    """
    sampled = Counter(trace.keys)
    if not trace.stream_key_counts or trace.rate >= 1:
        return dict.fromkeys(sampled, 1.0)
    stream: defaultdict[int, float] = defaultdict(float)
    for count in trace.stream_key_counts:
        stream[count.bit_length()] += count
    in_sample: defaultdict[int, float] = defaultdict(float)
    for count in sampled.values():
        in_sample[count.bit_length()] += count
    represented = sorted(in_sample)
    if not represented:
        return {}
    totals: defaultdict[int, float] = defaultdict(float)
    for tier, accesses in stream.items():
        totals[min(represented, key=lambda candidate: (abs(candidate - tier), candidate))] += accesses
    weight = {tier: totals[tier] / in_sample[tier] if totals[tier] else 1 / trace.rate for tier in represented}
    return {key: weight[count.bit_length()] for key, count in sampled.items()}


def reuse_profile(trace: Trace) -> ReuseProfile:
    """Reuse distances of the reads of ``trace`` (writes update recency, deletes forget a key)."""
    index_of: dict[str, int] = {}
    ids = [index_of.setdefault(key, len(index_of)) for key in trace.keys]
    weights = key_weights(trace)
    size = len(ids)
    tree = [0] * (size + 1)  # Fenwick tree over 1-based positions; 1 where a key was last accessed
    last_position = [0] * len(index_of)  # 0: no live earlier access
    counts = [0] * len(index_of)
    times = trace.times
    marked = distinct = 0
    distances: list[int] = []
    reuse_times: list[float] = []
    distinct_before: list[int] = []
    key_indexes: list[int] = []
    read, delete = Op.READ, Op.DELETE
    for position, (index, op) in enumerate(zip(ids, trace.ops, strict=True), start=1):
        previous = last_position[index]
        distance = -1
        if previous:
            # distinct keys accessed since: the marks after the previous position
            total, cursor = 0, previous
            while cursor:
                total += tree[cursor]
                cursor &= cursor - 1
            distance = marked - total
            cursor = previous
            while cursor <= size:
                tree[cursor] -= 1
                cursor += cursor & -cursor
            marked -= 1
            last_position[index] = 0
        if op is delete:
            continue
        if op is read:
            distances.append(distance)
            reuse_times.append(times[position - 1] - times[previous - 1] if previous else math.nan)
            distinct_before.append(distinct)
            key_indexes.append(index)
        if not counts[index]:
            distinct += 1
        counts[index] += 1
        last_position[index] = position
        cursor = position
        while cursor <= size:
            tree[cursor] += 1
            cursor += cursor & -cursor
        marked += 1
    return ReuseProfile(
        rate=trace.rate,
        total_reads=trace.seen_reads,
        distance=np.asarray(distances, dtype=np.int64),
        reuse_time=np.asarray(reuse_times, dtype=np.float64),
        distinct_before=np.asarray(distinct_before, dtype=np.int64),
        key_index=np.asarray(key_indexes, dtype=np.int64),
        keys=list(index_of),
        access_counts=np.asarray(counts, dtype=np.int64),
        weights=np.asarray([weights[key] for key in index_of], dtype=np.float64),
    )


def lru_curve(profile: ReuseProfile, sizes: list[int] | None = None) -> MissRatioCurve:
    """The LRU hit rate per cache size (SHARDS with the cold-start and post-stratification corrections)."""
    rate = profile.rate
    reads = len(profile.distance)
    weight = profile.weights[profile.key_index]
    weight_from = np.cumsum(weight[::-1])[::-1]  # total weight of the reads from each one on
    # slots a read needs to hit, scaled to the whole stream; no earlier access: never
    needed = np.where(profile.distance >= 0, profile.distance / rate + 1.0, np.inf)
    # distinct keys seen (estimated, whole stream) before each read; a key counts from its first access
    seen = profile.distinct_before / rate
    max_size = _max_size(seen, reads)
    points = []
    for size in sorted(sizes) if sizes else size_grid(max_size):
        start = int(np.searchsorted(seen, size, side="left"))
        scored = reads - start
        if scored < _min_scored(reads) or size > max_size:
            break
        hits = float(weight[start:][needed[start:] <= size].sum())
        points.append(CurvePoint(size_keys=size, hit_rate=min(1.0, hits / float(weight_from[start]))))
    return MissRatioCurve(
        policy="lru",
        model="stack",
        rate=rate,
        points=monotone(points),
        sampled_reads=reads,
        total_reads=profile.total_reads,
        distinct_keys=round(len(profile.keys) / rate),
        max_size_keys=max_size,
    )


def _min_scored(reads: int) -> int:
    return max(MIN_SCORED_READS, math.ceil(MIN_SCORED_SHARE * reads))


def _max_size(seen: NDArray[np.float64], reads: int) -> int:
    """The largest size with enough reads after its warm-up."""
    last_start = reads - _min_scored(reads)
    return int(seen[last_start]) if 0 <= last_start < reads else 0


def monotone(points: list[CurvePoint]) -> list[CurvePoint]:
    """A hit rate never above the one of a larger cache (LRU's inclusion property; estimates are noisy)."""
    lowest = 1.0
    for point in reversed(points):
        lowest = min(lowest, point.hit_rate)
        point.hit_rate = round(lowest, 5)
    return points


def size_grid(max_size: int, points: int = GRID_POINTS) -> list[int]:
    """Cache sizes to evaluate: half log-spaced (small caches), half evenly spaced, up to ``max_size``."""
    if max_size < 1:
        return []
    geometric = np.geomspace(1, max_size, points // 2)
    linear = np.linspace(max_size / (points // 2), max_size, points // 2)
    return sorted({max(1, round(float(size))) for size in np.concatenate([geometric, linear])})


def hit_rate_at(curve: MissRatioCurve, size_keys: float) -> float:
    """The curve's hit rate at ``size_keys`` (linear between points; the last point beyond them)."""
    if not curve.points:
        return 0.0
    sizes = [point.size_keys for point in curve.points]
    rates = [point.hit_rate for point in curve.points]
    return float(np.interp(size_keys, [0, *sizes], [0.0, *rates]))


def size_for_hit_rate(curve: MissRatioCurve, target: float) -> int | None:
    """The smallest cache size (keys) whose hit rate reaches ``target``; None if the curve never does."""
    previous_size, previous_rate = 0, 0.0
    for point in curve.points:
        if point.hit_rate >= target:
            if point.hit_rate == previous_rate:
                return point.size_keys
            share = (target - previous_rate) / (point.hit_rate - previous_rate)
            return max(1, math.ceil(previous_size + share * (point.size_keys - previous_size)))
        previous_size, previous_rate = point.size_keys, point.hit_rate
    return None


class SkewEstimate(BaseModel):
    """Zipf exponent of the popularity: ``count(rank) ~ rank ** -alpha`` (0: uniform; ~1: web-like)."""

    alpha: float
    r_squared: float
    keys_fitted: int


MIN_COUNT_FOR_FIT = 5


def zipf_alpha(counts: NDArray[np.int64] | list[int]) -> SkewEstimate | None:
    """Fit the rank-frequency line in log-log scale, on keys accessed at least 5 times.

    The ranks are grouped in log-spaced bins (the tail has many more ranks than the head and
    would otherwise drown it); None when fewer than 10 keys qualify.
    """
    ordered = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    ordered = ordered[ordered >= MIN_COUNT_FOR_FIT]
    if len(ordered) < 10:
        return None
    ranks = np.arange(1, len(ordered) + 1, dtype=np.float64)
    edges = np.unique(np.round(np.geomspace(1, len(ordered) + 1, 30)).astype(np.int64))
    x, y = [], []
    for low, high in itertools.pairwise(edges):
        x.append(float(np.mean(np.log(ranks[low - 1 : high - 1]))))
        y.append(float(np.mean(np.log(ordered[low - 1 : high - 1]))))
    slope, intercept = np.polyfit(x, y, 1)
    fitted = slope * np.asarray(x) + intercept
    residual = float(np.sum((np.asarray(y) - fitted) ** 2))
    total = float(np.sum((np.asarray(y) - np.mean(y)) ** 2)) or 1.0
    return SkewEstimate(
        alpha=round(-float(slope), 4), r_squared=round(1 - residual / total, 4), keys_fitted=len(ordered)
    )
