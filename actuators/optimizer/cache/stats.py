"""What a Redis says about itself (INFO, MEMORY STATS) and a bounded sample of its keys.

The key sample walks ``SCAN`` (a bounded number of calls) and asks, per key, ``MEMORY
USAGE``, ``TTL`` and, depending on the eviction policy, ``OBJECT FREQ`` (only under an LFU
policy) or ``OBJECT IDLETIME`` (only under the others): the one the server refuses is
reported as unknown. None of these commands changes a key's recency or frequency.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from pydantic import BaseModel
from redis import exceptions as redis_errors

MAX_SAMPLED_KEYS = 1000
SCAN_COUNT = 200
BIG_KEYS = 10
TOP_PATTERNS = 20
TTL_BUCKETS: list[tuple[str, float]] = [
    ("<1m", 60),
    ("1m-10m", 600),
    ("10m-1h", 3600),
    ("1h-1d", 86400),
    (">1d", float("inf")),
]


class RedisStats(BaseModel):
    """INFO and MEMORY STATS figures the advisor uses (bytes; counters since the server started).

    ``key_memory_bytes`` is the memory that grows with the number of keys: the dataset plus the
    key space's hash tables (MEMORY STATS); ``hit_ratio`` is hits / (hits + misses), None before
    the first lookup.
    """

    redis_version: str
    role: str
    keyspace_hits: int
    keyspace_misses: int
    hit_ratio: float | None
    evicted_keys: int
    expired_keys: int
    used_memory: int
    used_memory_dataset: int
    used_memory_startup: int
    mem_clients_normal: int
    mem_not_counted_for_evict: int
    key_memory_bytes: int
    maxmemory: int
    maxmemory_policy: str
    maxmemory_samples: int | None
    mem_fragmentation_ratio: float | None
    dbsize: int
    keys_total: int
    expires_total: int
    connected_clients: int


async def read_stats(client: aioredis.Redis) -> RedisStats:
    """INFO (all default sections), DBSIZE, MEMORY STATS and ``maxmemory-samples`` (the last two may be refused)."""
    info: dict[str, Any] = await client.info()
    dbsize = int(await client.dbsize())
    hashtables = await _hashtable_overhead(client)
    samples = await _config_int(client, "maxmemory-samples")
    hits, misses = int(info.get("keyspace_hits", 0)), int(info.get("keyspace_misses", 0))
    dataset = int(info.get("used_memory_dataset", 0))
    databases = [value for name, value in info.items() if _is_db(name, value)]
    return RedisStats(
        redis_version=str(info.get("redis_version", "")),
        role=str(info.get("role", "master")),
        keyspace_hits=hits,
        keyspace_misses=misses,
        hit_ratio=hits / (hits + misses) if hits + misses else None,
        evicted_keys=int(info.get("evicted_keys", 0)),
        expired_keys=int(info.get("expired_keys", 0)),
        used_memory=int(info.get("used_memory", 0)),
        used_memory_dataset=dataset,
        used_memory_startup=int(info.get("used_memory_startup", 0)),
        mem_clients_normal=int(info.get("mem_clients_normal", 0)),
        mem_not_counted_for_evict=int(info.get("mem_not_counted_for_evict", 0)),
        key_memory_bytes=dataset + (hashtables or 0),
        maxmemory=int(info.get("maxmemory", 0)),
        maxmemory_policy=str(info.get("maxmemory_policy", "noeviction")),
        maxmemory_samples=samples,
        mem_fragmentation_ratio=_float_or_none(info.get("mem_fragmentation_ratio")),
        dbsize=dbsize,
        keys_total=sum(int(database.get("keys", 0)) for database in databases),
        expires_total=sum(int(database.get("expires", 0)) for database in databases),
        connected_clients=int(info.get("connected_clients", 0)),
    )


def _is_db(name: str, value: object) -> bool:
    """``db0`` (INFO keyspace) or ``db.0`` (MEMORY STATS) with its fields."""
    return name.startswith("db") and name[2:].lstrip(".").isdigit() and isinstance(value, dict)


def _float_or_none(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


async def _hashtable_overhead(client: aioredis.Redis) -> int | None:
    """Bytes of the key spaces' hash tables (main and expires) over every database; None if refused."""
    try:
        stats = await client.memory_stats()
    except redis_errors.ResponseError:
        return None
    total = 0
    for name, value in stats.items():
        if _is_db(_text(name), value):
            total += sum(
                int(amount) for field, amount in value.items() if _text(field).startswith("overhead.hashtable")
            )
    return total


async def _config_int(client: aioredis.Redis, name: str) -> int | None:
    try:
        values = await client.config_get(name)
    except redis_errors.ResponseError:
        return None
    value = values.get(name, values.get(name.encode()))  # type: ignore[call-overload]
    return int(value) if value is not None else None


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_TOKENS = re.compile(r"([^0-9A-Za-z*]+)")
_HEX = re.compile(r"[0-9a-fA-F]{8,}")


def key_pattern(key: str) -> str:
    """The key with its identifiers replaced by ``*``: ``shipment:123`` -> ``shipment:*``.

    Identifiers are UUIDs, numbers, hex strings of 8+ characters with a digit, and tokens
    that are mostly digits (``ORD20240117``); names like ``v2`` stay.
    """
    parts = _TOKENS.split(_UUID.sub("*", key))
    return "".join(part if index % 2 else _token_pattern(part) for index, part in enumerate(parts))


def _token_pattern(token: str) -> str:
    digits = sum(char.isdigit() for char in token)
    if not digits:
        return token
    if (
        digits == len(token)
        or (_HEX.fullmatch(token) and len(token) >= 8)
        or (digits >= 3 and digits * 2 >= len(token))
    ):
        return "*"
    return token


class KeySample(BaseModel):
    """One sampled key. ``ttl_s`` None: no expiry; ``idle_s`` / ``freq``: None when the policy hides them."""

    key: str
    pattern: str
    bytes: int
    ttl_s: int | None
    idle_s: int | None
    freq: int | None


class PatternStats(BaseModel):
    pattern: str
    keys: int
    share: float
    mean_bytes: float
    total_bytes: int
    with_ttl: int
    median_ttl_s: float | None


class TtlDistribution(BaseModel):
    """Sampled keys per remaining time-to-live (``no_ttl``: keys that never expire)."""

    no_ttl: int
    buckets: dict[str, int]


class KeyspaceSample(BaseModel):
    sampled: int
    scan_calls: int
    complete: bool
    mean_bytes: float | None
    median_bytes: float | None
    ttl: TtlDistribution
    big_keys: list[KeySample]
    patterns: list[PatternStats]
    idle_known: bool
    freq_known: bool
    mean_idle_s: float | None
    mean_freq: float | None


async def scan_keys(client: aioredis.Redis, max_keys: int = MAX_SAMPLED_KEYS) -> tuple[list[bytes], int, bool]:
    """Up to ``max_keys`` keys from SCAN (at most ``4 * max_keys / SCAN_COUNT + 10`` calls); whether SCAN finished."""
    keys: list[bytes] = []  # the client does not decode replies
    cursor, calls, limit = 0, 0, 4 * max_keys // SCAN_COUNT + 10
    while len(keys) < max_keys and calls < limit:
        cursor, batch = await client.scan(cursor=cursor, count=SCAN_COUNT)
        calls += 1
        keys.extend(key if isinstance(key, bytes) else key.encode() for key in batch)
        if cursor == 0:
            return keys[:max_keys], calls, len(keys) <= max_keys
    return keys[:max_keys], calls, False


async def sample_keys(client: aioredis.Redis, policy: str, max_keys: int = MAX_SAMPLED_KEYS) -> KeyspaceSample:
    """Size, TTL and idle time (or LFU frequency) of up to ``max_keys`` keys found by SCAN."""
    keys, calls, complete = await scan_keys(client, max_keys)
    samples = await _describe_keys(client, keys, lfu="lfu" in policy)
    sizes = np.asarray([sample.bytes for sample in samples], dtype=np.float64)
    idle = [sample.idle_s for sample in samples if sample.idle_s is not None]
    freq = [sample.freq for sample in samples if sample.freq is not None]
    return KeyspaceSample(
        sampled=len(samples),
        scan_calls=calls,
        complete=complete,
        mean_bytes=round(float(sizes.mean()), 1) if len(sizes) else None,
        median_bytes=float(np.median(sizes)) if len(sizes) else None,
        ttl=ttl_distribution(samples),
        big_keys=sorted(samples, key=lambda sample: sample.bytes, reverse=True)[:BIG_KEYS],
        patterns=pattern_stats(samples),
        idle_known=bool(idle),
        freq_known=bool(freq),
        mean_idle_s=round(float(np.mean(idle)), 2) if idle else None,
        mean_freq=round(float(np.mean(freq)), 2) if freq else None,
    )


async def _describe_keys(client: aioredis.Redis, keys: list[bytes], *, lfu: bool) -> list[KeySample]:
    samples: list[KeySample] = []
    for start in range(0, len(keys), SCAN_COUNT):
        batch = keys[start : start + SCAN_COUNT]
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.memory_usage(key)
            pipe.ttl(key)
            pipe.object("FREQ" if lfu else "IDLETIME", key)
        replies = await pipe.execute(raise_on_error=False)
        for index, key in enumerate(batch):
            size, ttl, usage = replies[3 * index : 3 * index + 3]
            if not isinstance(size, int) or ttl == -2:  # gone since SCAN
                continue
            name = key.decode("utf-8", "surrogateescape")
            known = usage if isinstance(usage, int) else None  # an error reply: the policy hides it
            samples.append(
                KeySample(
                    key=name,
                    pattern=key_pattern(name),
                    bytes=size,
                    ttl_s=ttl if isinstance(ttl, int) and ttl >= 0 else None,
                    idle_s=None if lfu else known,
                    freq=known if lfu else None,
                )
            )
    return samples


def ttl_distribution(samples: list[KeySample]) -> TtlDistribution:
    buckets = dict.fromkeys((name for name, _ in TTL_BUCKETS), 0)
    for sample in samples:
        if sample.ttl_s is not None:
            buckets[next(name for name, limit in TTL_BUCKETS if sample.ttl_s < limit)] += 1
    return TtlDistribution(no_ttl=sum(1 for sample in samples if sample.ttl_s is None), buckets=buckets)


def pattern_stats(samples: list[KeySample]) -> list[PatternStats]:
    grouped: defaultdict[str, list[KeySample]] = defaultdict(list)
    for sample in samples:
        grouped[sample.pattern].append(sample)
    counts = Counter({pattern: len(members) for pattern, members in grouped.items()})
    stats = []
    for pattern, count in counts.most_common(TOP_PATTERNS):
        members = grouped[pattern]
        ttls = [member.ttl_s for member in members if member.ttl_s is not None]
        total = sum(member.bytes for member in members)
        stats.append(
            PatternStats(
                pattern=pattern,
                keys=count,
                share=round(count / len(samples), 4),
                mean_bytes=round(total / count, 1),
                total_bytes=total,
                with_ttl=len(ttls),
                median_ttl_s=float(np.median(ttls)) if ttls else None,
            )
        )
    return stats
