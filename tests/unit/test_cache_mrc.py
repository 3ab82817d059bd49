"""The cache advisor's pure parts: reuse distances and hit-rate curves, sampling, skew, the Redis
simulation, MONITOR parsing, key patterns, the bytes model, TTLs and the keep/rollback verdict."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from actuators.optimizer.cache.apply import HitRateWindow, verdict
from actuators.optimizer.cache.memory import memory_model
from actuators.optimizer.cache.mrc import (
    CurvePoint,
    MissRatioCurve,
    hit_rate_at,
    lru_curve,
    reuse_profile,
    size_for_hit_rate,
    zipf_alpha,
)
from actuators.optimizer.cache.recommend import recommend_ttls
from actuators.optimizer.cache.redis_sim import simulate_hit_rate
from actuators.optimizer.cache.sampler import Op, SpatialFilter, _TraceBuilder, parse_quoted, trace_from_keys
from actuators.optimizer.cache.stats import RedisStats, key_pattern


def zipf_keys(accesses: int, keys: int, alpha: float, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    weights = np.arange(1, keys + 1, dtype=np.float64) ** -alpha
    ranks = np.minimum(np.searchsorted(np.cumsum(weights / weights.sum()), rng.random(accesses)), keys - 1)
    names = rng.permutation(keys)  # popularity is not the key's number
    return [f"item:{names[rank]}" for rank in ranks]


def lru_hit_rate(keys: list[str], size: int) -> float:
    """A real LRU cache of ``size`` keys, scored on the reads after ``size`` distinct keys were seen."""
    cache: OrderedDict[str, None] = OrderedDict()
    seen: set[str] = set()
    hits = scored = 0
    for key in keys:
        warm = len(seen) >= size
        hit = key in cache
        if hit:
            cache.move_to_end(key)
        else:
            cache[key] = None
            if len(cache) > size:
                cache.popitem(last=False)
        seen.add(key)
        if warm:
            scored += 1
            hits += hit
    return hits / scored


# --- reuse distances and the LRU curve --------------------------------------------------------


def test_reuse_distances_count_distinct_keys_writes_refresh_and_deletes_forget() -> None:
    trace = trace_from_keys(
        ["a", "b", "b", "c", "a", "b", "a", "a"],
        ops=[Op.READ, Op.READ, Op.READ, Op.WRITE, Op.READ, Op.DELETE, Op.READ, Op.READ],
    )
    profile = reuse_profile(trace)
    # reads: a (cold), b (cold), b (0 between), a (b and c between), a (b deleted: nothing between), a
    assert profile.distance.tolist() == [-1, -1, 0, 2, 0, 0]
    assert profile.total_reads == 6


def test_a_cyclic_scan_misses_below_its_length_and_hits_at_it() -> None:
    keys = 100
    trace = trace_from_keys([f"k{index % keys}" for index in range(keys * 20)])
    curve = lru_curve(reuse_profile(trace), sizes=[1, 50, keys - 1, keys])
    rates = {point.size_keys: point.hit_rate for point in curve.points}
    assert rates[1] == rates[50] == rates[keys - 1] == 0.0
    assert rates[keys] == pytest.approx(1.0)
    assert size_for_hit_rate(curve, 0.5) == keys


@pytest.mark.parametrize("size", [50, 400, 1500])
def test_the_exact_curve_matches_a_real_lru_cache(size: int) -> None:
    keys = zipf_keys(40_000, 3000, 0.8)
    curve = lru_curve(reuse_profile(trace_from_keys(keys)), sizes=[size])
    assert curve.points[0].hit_rate == pytest.approx(lru_hit_rate(keys, size), abs=1e-3)


def test_a_sample_at_a_tenth_approximates_the_exact_curve() -> None:
    keys = zipf_keys(300_000, 10_000, 0.9)
    sizes = [200, 1000, 3000, 6000]
    exact = lru_curve(reuse_profile(trace_from_keys(keys)), sizes=sizes)
    sampled_trace = trace_from_keys(keys, rate=0.1)
    sampled = lru_curve(reuse_profile(sampled_trace), sizes=sizes)
    assert 0.04 < len(sampled_trace) / len(keys) < 0.25  # about a tenth of the accesses, hot keys aside
    for size in sizes:
        assert hit_rate_at(sampled, size) == pytest.approx(hit_rate_at(exact, size), abs=0.03), size


def test_the_curve_is_monotone_and_bounded_by_the_window() -> None:
    keys = zipf_keys(50_000, 5000, 0.7)
    curve = lru_curve(reuse_profile(trace_from_keys(keys, rate=0.5)))
    rates = [point.hit_rate for point in curve.points]
    assert rates == sorted(rates)
    assert all(0.0 <= rate <= 1.0 for rate in rates)
    assert 0 < curve.max_size_keys <= curve.distinct_keys


def test_size_for_hit_rate_interpolates_and_says_when_unreachable() -> None:
    curve = MissRatioCurve(
        policy="lru",
        model="stack",
        rate=1.0,
        points=[CurvePoint(size_keys=100, hit_rate=0.5), CurvePoint(size_keys=200, hit_rate=0.7)],
        sampled_reads=1000,
        total_reads=1000,
        distinct_keys=300,
        max_size_keys=200,
    )
    assert size_for_hit_rate(curve, 0.6) == 150
    assert size_for_hit_rate(curve, 0.25) == 50
    assert size_for_hit_rate(curve, 0.8) is None
    assert hit_rate_at(curve, 150) == pytest.approx(0.6)


# --- skew ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.6, 0.9, 1.2])
def test_the_zipf_exponent_is_recovered_from_access_counts(alpha: float) -> None:
    counts = np.unique(zipf_keys(200_000, 10_000, alpha, seed=3), return_counts=True)[1]
    estimate = zipf_alpha(counts)
    assert estimate is not None
    assert estimate.alpha == pytest.approx(alpha, abs=0.08)
    assert estimate.r_squared > 0.95


def test_uniform_popularity_has_a_small_exponent() -> None:
    counts = np.random.default_rng(0).multinomial(200_000, np.full(5000, 1 / 5000))
    estimate = zipf_alpha(counts)
    assert estimate is not None and estimate.alpha < 0.3


def test_the_trace_counts_every_key_of_the_stream_for_the_skew() -> None:
    keys = zipf_keys(20_000, 2000, 1.0)
    trace = trace_from_keys(keys, rate=0.1)
    assert sum(trace.stream_key_counts) == len(keys)
    assert len(trace.stream_key_counts) == len(set(keys))


# --- spatial sampling and the Redis simulation ------------------------------------------------------


def test_spatial_sampling_keeps_every_access_of_a_sampled_key_and_is_stable() -> None:
    keys = zipf_keys(20_000, 2000, 0.8)
    trace = trace_from_keys(keys, rate=0.2)
    sampled = set(trace.keys)
    assert all(keys.count(key) == trace.keys.count(key) for key in list(sampled)[:20])
    assert sampled == set(trace_from_keys(keys, rate=0.2).keys)
    keep = SpatialFilter(0.2)
    assert all(keep(key.encode()) for key in sampled)
    assert 0.15 < len(sampled) / len(set(keys)) < 0.25
    assert set(trace.resampled(0.1).keys) <= sampled


def test_redis_approximate_lru_is_close_to_but_not_above_exact_lru() -> None:
    keys = zipf_keys(200_000, 10_000, 0.9)
    trace = trace_from_keys(keys, interval_s=1 / 20_000)
    exact = lru_curve(reuse_profile(trace), sizes=[3000])
    simulated = simulate_hit_rate(trace, 3000, "lru")
    assert simulated is not None
    assert exact.points[0].hit_rate - 0.05 < simulated[0] <= exact.points[0].hit_rate + 0.01


def test_redis_lfu_beats_redis_lru_on_stable_skewed_popularity() -> None:
    trace = trace_from_keys(zipf_keys(200_000, 10_000, 1.0), rate=0.5, interval_s=1 / 20_000)
    lru, lfu = simulate_hit_rate(trace, 2000, "lru"), simulate_hit_rate(trace, 2000, "lfu")
    assert lru is not None and lfu is not None
    assert lfu[0] > lru[0]


def test_a_miniature_cache_that_never_fills_tells_nothing() -> None:
    assert simulate_hit_rate(trace_from_keys(["a", "b", "a"] * 100), 10, "lru") is None


# --- MONITOR lines ---------------------------------------------------------------------------------


def test_monitor_arguments_are_unescaped() -> None:
    line = rb'"plain" "with \"quote\"" "back\\slash" "\x00\xffbin" "new\nline"'
    assert parse_quoted(line) == [b"plain", b'with "quote"', b"back\\slash", b"\x00\xffbin", b"new\nline"]
    assert parse_quoted(line, limit=2) == [b"plain", b'with "quote"']


def test_monitor_lines_become_reads_writes_and_deletes() -> None:
    builder = _TraceBuilder(rate=1.0, max_events=100)
    lines = [
        b'+1700000000.000001 [0 127.0.0.1:5000] "GET" "shipment:1"',
        b'+1700000000.000002 [0 127.0.0.1:5000] "mget" "a" "b"',
        b'+1700000000.000003 [0 lua] "MSET" "k1" "v1" "k2" "v2"',
        b'+1700000000.000004 [0 unix:/tmp/r.sock] "DEL" "a"',
        b'+1700000000.000005 [0 127.0.0.1:5000] "INFO" "stats"',
        b'+1700000000.000006 [0 127.0.0.1:5000] "SET" "x" "value with \\"quotes\\""',
    ]
    for line in lines:
        builder.add_monitor_line(line)
    trace = builder.finish()
    assert trace.keys == ["shipment:1", "a", "b", "k1", "k2", "a", "x"]
    assert trace.ops == [Op.READ, Op.READ, Op.READ, Op.WRITE, Op.WRITE, Op.DELETE, Op.WRITE]
    assert trace.times[0] == pytest.approx(1700000000.000001)
    assert (trace.seen_commands, trace.seen_reads, trace.seen_writes, trace.seen_deletes) == (6, 3, 3, 1)


def test_the_sample_stops_at_max_events_but_keeps_counting() -> None:
    builder = _TraceBuilder(rate=1.0, max_events=3)
    for index in range(10):
        builder.add(f"k{index}".encode(), Op.READ, float(index))
    assert builder.full and len(builder.trace) == 3 and builder.trace.seen_reads == 10


# --- patterns, memory, TTLs, verdicts ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "pattern"),
    [
        ("shipment:123", "shipment:*"),
        ("order:550e8400-e29b-41d4-a716-446655440000:items", "order:*:items"),
        ("session/deadbeefcafe1234", "session/*"),
        ("ORD20240117", "*"),
        ("v2:cart:abc", "v2:cart:abc"),
        ("user_42.profile", "user_*.profile"),
    ],
)
def test_key_patterns_replace_identifiers(key: str, pattern: str) -> None:
    assert key_pattern(key) == pattern


def stats(**overrides: object) -> RedisStats:
    values: dict[str, object] = {
        "redis_version": "7.0.15",
        "role": "master",
        "keyspace_hits": 0,
        "keyspace_misses": 0,
        "hit_ratio": None,
        "evicted_keys": 0,
        "expired_keys": 0,
        "used_memory": 10_000_000,
        "used_memory_dataset": 8_000_000,
        "used_memory_startup": 900_000,
        "mem_clients_normal": 20_000,
        "mem_not_counted_for_evict": 0,
        "key_memory_bytes": 8_931_072,  # dataset + 10000 * 24 + 16384 slots * 8 + ...
        "maxmemory": 0,
        "maxmemory_policy": "noeviction",
        "maxmemory_samples": 5,
        "mem_fragmentation_ratio": 1.2,
        "dbsize": 10_000,
        "keys_total": 10_000,
        "expires_total": 0,
        "connected_clients": 2,
    }
    return RedisStats.model_validate({**values, **overrides})


def test_the_memory_model_counts_keys_and_keeps_the_rest_fixed() -> None:
    model = memory_model(stats())
    assert model is not None
    buckets = 16_384 * 8
    assert model.bucket_bytes == buckets
    assert model.bytes_per_key == pytest.approx((8_931_072 - buckets) / 10_000)
    assert model.maxmemory_for(10_000) == pytest.approx(10_000_000, abs=1)
    assert model.keys_for(model.maxmemory_for(6000)) == 6000
    assert model.maxmemory_for(6000) == pytest.approx(10_000_000 - 4000 * model.bytes_per_key, abs=1)


def test_the_memory_model_needs_keys() -> None:
    assert memory_model(stats(keys_total=0, dbsize=0)) is None


def test_ttls_cover_the_p95_reuse_interval_and_never_exceed_the_configured_one() -> None:
    # "fast:*" keys come back every 2 s, "slow:*" keys every 40 s: within a 60 s window.
    events: list[tuple[float, str]] = []
    for index in range(20):
        events += [(start + index * 0.01, f"fast:{index}") for start in np.arange(0, 60, 2.0)]
        events += [(start + index * 0.01, f"slow:{index}") for start in (0.0, 40.0)]
    events.sort()
    builder = _TraceBuilder(rate=1.0, max_events=10_000)
    for at, key in events:
        builder.add(key.encode(), Op.READ, at)
    ttls = {ttl.pattern: ttl for ttl in recommend_ttls(reuse_profile(builder.finish()), 60.0, 3600.0)}
    assert ttls["fast:*"].ttl_s == 2
    assert ttls["slow:*"].ttl_s == 3600  # 40 s reaches half the window: unobservable, keep the configured ttl
    capped = {ttl.pattern: ttl for ttl in recommend_ttls(reuse_profile(builder.finish()), 600.0, 30.0)}
    assert capped["slow:*"].ttl_s == 30


def window(hit_rate: float | None, lookups: int = 10_000) -> HitRateWindow:
    hits = round((hit_rate or 0) * lookups)
    return HitRateWindow(
        seconds=1, hits=hits, misses=lookups - hits, hit_rate=hit_rate, used_memory=0, evicted_keys=0, keys=0
    )


def test_the_verdict_keeps_a_change_meeting_the_target_or_no_worse_and_rolls_back_the_rest() -> None:
    assert verdict(window(1.0), window(0.895), 0.9, 0.02)[0]  # shrunk to the target
    assert verdict(window(0.6), window(0.7), 0.9, 0.02)[0]  # towards an unreachable target
    assert verdict(window(0.7), window(0.69), 0.9, 0.02)[0]  # within the tolerance
    keep, reason = verdict(window(1.0), window(0.3), 0.9, 0.02)
    assert not keep and "worse" in reason
    keep, reason = verdict(window(1.0), window(None, lookups=0), 0.9, 0.02)
    assert not keep and "too few" in reason
