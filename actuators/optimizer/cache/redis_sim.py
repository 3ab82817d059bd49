"""Miniature simulations of Redis's own eviction (Waldspurger et al., USENIX ATC'17).

Redis does not run exact LRU or LFU: on each eviction it samples ``maxmemory-samples``
keys, keeps the best candidates in a pool of 16 and evicts the best of the pool; LRU
recency has a one-second clock, and LFU keeps an 8-bit logarithmic counter per key
(incremented with probability ``1 / ((counter - 5) * lfu-log-factor + 1)``, new keys start
at 5, minus one per ``lfu-decay-time`` minutes idle). With small caches or high request
rates these approximations cost several points of hit rate against the exact policies.

A spatially sampled trace keeps every access of its keys with their timing, so simulating
Redis's algorithm on it with a cache of ``R * C`` keys estimates the hit rate of the real
cache of ``C`` keys. The simulated client is cache-aside: a read miss fills the key (the
client's own ``SET`` right after it in the trace is that fill, not a new access).

Reads are scored only once the miniature cache has been full for the first time (the
cold start of the window is not a property of a running cache), each weighted by its key's
popularity tier (:func:`actuators.optimizer.cache.mrc.key_weights`).
"""

from __future__ import annotations

import random
from bisect import bisect_left
from typing import Literal

from actuators.optimizer.cache.mrc import MIN_SCORED_READS, CurvePoint, MissRatioCurve, Policy, key_weights, monotone
from actuators.optimizer.cache.sampler import Op, Trace

POOL_SIZE = 16
LFU_INIT = 5
LFU_LOG_FACTOR = 10
LFU_DECAY_MINUTES = 1
DEFAULT_SAMPLES = 10

Mode = Literal["lru", "lfu"]


class _MiniRedis:
    """Keys (with their LRU clock or LFU counter) and Redis's sampled eviction with a pool."""

    def __init__(self, capacity: int, mode: Mode, samples: int, seed: int) -> None:
        self.capacity = capacity
        self.lfu = mode == "lfu"
        self.samples = samples
        self.random = random.Random(seed)
        self.meta: dict[str, int] = {}  # LRU: clock second; LFU: minutes << 8 | counter
        self.slot: dict[str, int] = {}
        self.keys: list[str] = []
        self.pool_scores: list[int] = []  # ascending; the best candidate is last
        self.pool_keys: list[str] = []
        self.now_s = 0
        self.now_min = 0

    def touch(self, key: str) -> bool:
        """An access to ``key``; whether it was cached."""
        meta = self.meta.get(key)
        if meta is None:
            return False
        self.meta[key] = self._lfu_increment(meta) if self.lfu else self.now_s
        return True

    def insert(self, key: str) -> None:
        self.meta[key] = (self.now_min << 8) | LFU_INIT if self.lfu else self.now_s
        self.slot[key] = len(self.keys)
        self.keys.append(key)
        while len(self.keys) > self.capacity:
            self._evict()

    def _lfu_counter(self, meta: int) -> int:
        counter = meta & 255
        periods = (self.now_min - (meta >> 8)) // LFU_DECAY_MINUTES
        return max(0, counter - periods)

    def _lfu_increment(self, meta: int) -> int:
        counter = self._lfu_counter(meta)
        if counter < 255:
            base = max(0, counter - LFU_INIT)
            if self.random.random() < 1.0 / (base * LFU_LOG_FACTOR + 1):
                counter += 1
        return (self.now_min << 8) | counter

    def _score(self, key: str) -> int:
        """Redis's ``idle``: the higher, the better to evict."""
        meta = self.meta[key]
        return 255 - self._lfu_counter(meta) if self.lfu else self.now_s - meta

    def _populate(self) -> None:
        keys, scores, names = self.keys, self.pool_scores, self.pool_keys
        for _ in range(min(self.samples, len(keys))):
            key = keys[self.random.randrange(len(keys))]
            score = self._score(key)
            position = bisect_left(scores, score)
            if len(scores) >= POOL_SIZE:
                if position == 0:
                    continue  # worse than every candidate of a full pool
                del scores[0], names[0]
                position -= 1
            scores.insert(position, score)
            names.insert(position, key)

    def _evict(self) -> None:
        self._populate()
        while self.pool_keys:
            key = self.pool_keys.pop()
            self.pool_scores.pop()
            if key in self.meta:  # the pool may hold keys already evicted; not rechecked for recency (as Redis)
                self._remove(key)
                return
        self._remove(self.keys[self.random.randrange(len(self.keys))])

    def _remove(self, key: str) -> None:
        del self.meta[key]
        index = self.slot.pop(key)
        last = self.keys.pop()
        if last != key:
            self.keys[index] = last
            self.slot[last] = index


def simulate_hit_rate(
    trace: Trace, size_keys: int, mode: Mode, *, samples: int = DEFAULT_SAMPLES, seed: int = 0
) -> tuple[float, int] | None:
    """Redis's hit rate with room for ``size_keys`` keys, from the sampled trace; None if the
    miniature cache never fills (or too few reads follow). Also the number of reads scored."""
    capacity = max(1, round(size_keys * trace.rate))
    cache = _MiniRedis(capacity, mode, samples, seed)
    weights = key_weights(trace)
    hits = total = 0.0
    scored = 0
    warm = False
    filled: str | None = None  # the key a read miss just filled: the client's SET of it is that fill
    for key, op, at in zip(trace.keys, trace.ops, trace.times, strict=True):
        cache.now_s = int(at)
        cache.now_min = int(at // 60)
        if op is Op.DELETE:
            if key in cache.meta:
                cache._remove(key)
            continue
        if op is Op.WRITE:
            if key == filled:
                filled = None
            elif not cache.touch(key):
                cache.insert(key)
            continue
        hit = cache.touch(key)
        if not hit:
            cache.insert(key)
            filled = key
        if warm:
            weight = weights[key]
            scored += 1
            total += weight
            hits += weight if hit else 0.0
        elif len(cache.keys) >= capacity:
            warm = True
    if scored < MIN_SCORED_READS:
        return None
    return min(1.0, hits / total), scored


def simulated_curve(
    trace: Trace, sizes: list[int], mode: Mode, *, samples: int = DEFAULT_SAMPLES, seed: int = 0
) -> MissRatioCurve:
    """Redis's hit rate at each of ``sizes`` (keys), simulated; sizes the window cannot tell are left out."""
    points = []
    for size in sorted(set(sizes)):
        result = simulate_hit_rate(trace, size, mode, samples=samples, seed=seed)
        if result is None:
            break
        points.append(CurvePoint(size_keys=size, hit_rate=result[0]))
    policy: Policy = mode
    reads = sum(1 for op in trace.ops if op is Op.READ)
    return MissRatioCurve(
        policy=policy,
        model="simulation",
        rate=trace.rate,
        points=monotone(points),
        sampled_reads=reads,
        total_reads=trace.seen_reads,
        distinct_keys=round(len(set(trace.keys)) / trace.rate),
        max_size_keys=points[-1].size_keys if points else 0,
    )
