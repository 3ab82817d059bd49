"""The cache advisor and its apply/rollback against real ``redis-server`` processes (each test starts its own)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from pydantic import SecretStr
from support.net import free_port
from support.redis_server import redis_server

from actuators.optimizer.cache.advisor import CacheAdvisor
from actuators.optimizer.cache.apply import CacheChange, apply_change, recover, rollback
from actuators.optimizer.cache.connection import CacheSettingsInvalid, RedisRefused, RedisUnavailable
from actuators.optimizer.cache.sampler import MonitorSampler
from actuators.optimizer.journal import Kind, OptimizationJournal, Status
from tmsops.errors import PermanentError, TemporaryError
from tmsops.settings import CacheOptimization
from tmsops.state import make_engine

pytestmark = pytest.mark.anyio

KEYS = 2000
StartRedis = Callable[..., str]


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[StartRedis]:
    """Starts ``redis-server`` processes (extra arguments allowed) on free ports; returns their URLs."""
    numbers = itertools.count()
    with contextlib.ExitStack() as servers:

        def start(*extra: str) -> str:
            return servers.enter_context(redis_server(tmp_path / f"redis-{next(numbers)}", *extra))

        yield start


@pytest.fixture
def journal(tmp_path: Path) -> OptimizationJournal:
    return OptimizationJournal(make_engine(f"sqlite:///{tmp_path / 'state' / 'tmsops.db'}"))


def load(url: str) -> None:
    """``shipment:N`` (300 bytes, half with a 10-minute TTL) and ``user:N:profile`` (2 kB) keys."""
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    for index in range(KEYS):
        pipe.set(f"shipment:{index}", b"s" * 300, ex=600 if index % 2 else None)
    for index in range(KEYS // 10):
        pipe.set(f"user:{index}:profile", b"u" * 2000)
    pipe.execute()
    client.close()


@contextlib.asynccontextmanager
async def traffic(url: str, alpha: float = 0.9) -> AsyncIterator[None]:
    """A cache-aside client in the background: GET a Zipf-chosen shipment, SET it on a miss."""
    client = aioredis.Redis.from_url(url)
    weights = np.arange(1, KEYS + 1, dtype=np.float64) ** -alpha
    cdf = np.cumsum(weights / weights.sum())
    rng = np.random.default_rng(0)
    stop = asyncio.Event()  # not Task.cancel(): a cancellation inside a redis-py pipeline can be lost

    async def run() -> None:
        while not stop.is_set():
            names = [f"shipment:{rank}" for rank in np.searchsorted(cdf, rng.random(50))]
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.get(name)
            replies = await pipe.execute()
            missed = [name for name, reply in zip(names, replies, strict=True) if reply is None]
            if missed:
                await client.mset({name: b"s" * 300 for name in missed})
            await asyncio.sleep(0.001)

    task = asyncio.create_task(run())
    try:
        await asyncio.sleep(0.2)
        yield
    finally:
        stop.set()
        await task
        await client.aclose()


def config(url: str) -> dict[str, str]:
    client = redis.Redis.from_url(url, decode_responses=True)
    names = ("maxmemory", "maxmemory-policy", "maxmemory-samples")
    values = {name: str(client.config_get(name)[name]) for name in names}
    client.close()
    return values


async def test_analyze_reports_stats_patterns_ttls_and_a_recommendation(start_redis: StartRedis) -> None:
    url = start_redis()
    load(url)
    settings = CacheOptimization(
        redis_url=SecretStr(url), service="shipment-service", strategy="lru", sample_rate=1.0, target_hit_rate=0.8
    )
    before = config(url)
    async with traffic(url), CacheAdvisor.from_settings(settings) as advisor:
        report = await advisor.analyze(window_s=1.5)
    assert config(url) == before  # analysing changes nothing
    assert report.service == "shipment-service"
    assert report.stats.dbsize == report.stats.keys_total == KEYS + KEYS // 10
    assert report.stats.expires_total == KEYS // 2
    assert report.stats.maxmemory_policy == "noeviction"
    assert report.window_hit_rate == pytest.approx(1.0)
    patterns = {pattern.pattern: pattern for pattern in report.keyspace.patterns}
    assert set(patterns) == {"shipment:*", "user:*:profile"}
    assert patterns["user:*:profile"].mean_bytes > patterns["shipment:*"].mean_bytes
    assert report.keyspace.big_keys[0].pattern == "user:*:profile"
    assert report.keyspace.ttl.no_ttl > 0 and report.keyspace.ttl.buckets["10m-1h"] > 0
    assert report.keyspace.idle_known and not report.keyspace.freq_known  # OBJECT FREQ refused under noeviction
    assert report.trace.seen_reads > 1000 and report.trace.sampled_reads == report.trace.seen_reads
    assert report.skew is not None and report.skew.alpha > 0.5
    assert [ttl.pattern for ttl in report.recommendation.ttls] == ["shipment:*"]
    assert 1 <= report.recommendation.ttls[0].ttl_s <= 3600
    memory = report.recommendation.memory
    assert memory is not None and memory.meets_target
    assert 0 < memory.size_keys < KEYS
    assert memory.fixed_bytes < memory.maxmemory_bytes < report.stats.used_memory
    assert report.recommendation.policy.policy == "allkeys-lru"
    assert {(curve.model, curve.policy) for curve in report.curves} == {("stack", "lru"), ("simulation", "lru")}


async def test_object_freq_is_read_under_an_lfu_policy(start_redis: StartRedis) -> None:
    url = start_redis("--maxmemory-policy", "allkeys-lfu")
    load(url)
    async with CacheAdvisor(url, sample_rate=1.0) as advisor:
        report = await advisor.analyze(window_s=0.2)
    assert report.keyspace.freq_known and not report.keyspace.idle_known
    assert report.recommendation.memory is None and report.recommendation.notes  # no traffic: nothing to size


async def test_the_sampler_stops_on_request(start_redis: StartRedis) -> None:
    url = start_redis()
    client = aioredis.Redis.from_url(url)
    sampler = MonitorSampler(client, rate=1.0)
    task = asyncio.create_task(sampler.run(60))
    await asyncio.sleep(0.2)
    await client.get("shipment:1")
    await asyncio.sleep(0.2)
    sampler.stop()
    trace = await task
    await client.aclose()
    assert trace.stopped_by == "stopped"
    assert trace.keys == ["shipment:1"]


async def test_a_dry_run_changes_nothing_and_is_journalled(
    start_redis: StartRedis, journal: OptimizationJournal
) -> None:
    url = start_redis()
    before = config(url)
    change = CacheChange(maxmemory_bytes=50_000_000, policy="allkeys-lfu")
    entry = await apply_change(journal, change, redis_url=url, service="svc", target_hit_rate=0.9, dry_run=True)
    assert config(url) == before
    assert entry.status is Status.DRY_RUN and entry.kind is Kind.CACHE
    assert entry.change["settings"] == {
        "maxmemory": "50000000",
        "maxmemory-policy": "allkeys-lfu",
        "maxmemory-samples": "10",
    }
    assert entry.undo["settings"] == {"maxmemory": "0", "maxmemory-policy": "noeviction", "maxmemory-samples": "5"}


async def test_a_change_that_holds_the_hit_rate_is_kept(start_redis: StartRedis, journal: OptimizationJournal) -> None:
    url = start_redis()
    load(url)
    change = CacheChange(maxmemory_bytes=200_000_000, policy="allkeys-lru")
    async with traffic(url):
        entry = await apply_change(
            journal, change, redis_url=url, service="svc", target_hit_rate=0.9, window_s=0.5, settle_s=0.1
        )
    assert entry.status is Status.KEPT, entry.reason
    assert config(url) == {"maxmemory": "200000000", "maxmemory-policy": "allkeys-lru", "maxmemory-samples": "10"}
    assert entry.before is not None and entry.before["hit_rate"] == pytest.approx(1.0)
    assert entry.before["settings"]["maxmemory-policy"] == "noeviction"
    assert entry.after is not None and entry.after["hit_rate"] == pytest.approx(1.0)
    assert [item.id for item in journal.recent(kind=Kind.CACHE)] == [entry.id]

    restored = await rollback(journal, entry, redis_url=url)
    assert restored.status is Status.ROLLED_BACK
    assert config(url) == {"maxmemory": "0", "maxmemory-policy": "noeviction", "maxmemory-samples": "5"}


async def test_a_change_that_makes_the_hit_rate_worse_is_rolled_back(
    start_redis: StartRedis, journal: OptimizationJournal
) -> None:
    url = start_redis()
    load(url)
    before = config(url)
    memory = redis.Redis.from_url(url).info("memory")
    tiny = int(memory["used_memory"]) - int(0.85 * int(memory["used_memory_dataset"]))  # room for ~15% of the keys
    async with traffic(url):
        entry = await apply_change(
            journal,
            CacheChange(maxmemory_bytes=tiny, policy="allkeys-lru"),
            redis_url=url,
            service="svc",
            target_hit_rate=0.9,
            window_s=0.5,
            settle_s=0.2,
        )
    assert entry.status is Status.ROLLED_BACK
    assert "worse" in entry.reason
    assert entry.after is not None and entry.after["hit_rate"] < 0.8 and entry.after["evicted_keys"] > 0
    assert config(url) == before


async def test_an_interrupted_apply_restores_the_previous_values(
    start_redis: StartRedis, journal: OptimizationJournal
) -> None:
    url = start_redis()
    load(url)
    before = config(url)
    async with traffic(url):
        task = asyncio.create_task(
            apply_change(
                journal,
                CacheChange(maxmemory_bytes=300_000_000, policy="allkeys-lfu"),
                redis_url=url,
                service="svc",
                target_hit_rate=0.9,
                window_s=0.3,
                settle_s=30,
            )
        )
        while not journal.recent(kind=Kind.CACHE) or journal.recent(kind=Kind.CACHE)[0].status is not Status.MEASURING:
            await asyncio.sleep(0.05)
        assert config(url)["maxmemory-policy"] == "allkeys-lfu"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert config(url) == before
    assert journal.recent(kind=Kind.CACHE)[0].status is Status.ROLLED_BACK


async def test_recover_rolls_back_what_a_crash_left_in_place(
    start_redis: StartRedis, journal: OptimizationJournal
) -> None:
    url = start_redis()
    before = config(url)
    entry = journal.begin(
        Kind.CACHE,
        "svc",
        "maxmemory=1000000000",
        "config_set",
        change={"settings": {"maxmemory": "1000000000", "maxmemory-policy": "allkeys-lru"}},
        undo={"settings": before},
    )
    client = redis.Redis.from_url(url)
    client.config_set("maxmemory", "1000000000")  # the change was made, then the process died
    client.config_set("maxmemory-policy", "allkeys-lru")
    client.close()
    recovered = await recover(journal, redis_url=url)
    assert [item.id for item in recovered] == [entry.id]
    assert recovered[0].status is Status.ROLLED_BACK
    assert config(url) == before
    assert await recover(journal, redis_url=url) == []


async def test_an_unreachable_redis_is_a_temporary_error(journal: OptimizationJournal) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(RedisUnavailable) as raised:
        async with CacheAdvisor(url) as advisor:
            await advisor.analyze(window_s=0.1)
    assert isinstance(raised.value, TemporaryError) and raised.value.http_status == 503
    with pytest.raises(RedisUnavailable):
        await apply_change(journal, CacheChange(policy="allkeys-lru"), redis_url=url, service="s", target_hit_rate=0.9)
    assert journal.recent() == []


async def test_a_read_only_replica_is_refused(start_redis: StartRedis, journal: OptimizationJournal) -> None:
    primary = start_redis()
    port = primary.rsplit(":", 1)[1].split("/")[0]
    replica = start_redis("--replicaof", "127.0.0.1", port)
    before = config(replica)
    with pytest.raises(RedisRefused) as raised:
        await apply_change(
            journal, CacheChange(maxmemory_bytes=10_000_000), redis_url=replica, service="s", target_hit_rate=0.9
        )
    assert isinstance(raised.value, PermanentError) and raised.value.http_status == 409
    assert "replica" in raised.value.message and "primary" in raised.value.message
    assert config(replica) == before
    assert journal.recent() == []


async def test_a_disabled_config_command_is_refused(start_redis: StartRedis, journal: OptimizationJournal) -> None:
    url = start_redis("--rename-command", "CONFIG", "")
    with pytest.raises(RedisRefused) as raised:
        await apply_change(
            journal, CacheChange(policy="allkeys-lru"), redis_url=url, service="s", target_hit_rate=0.9, dry_run=True
        )
    assert raised.value.http_status == 409 and "CONFIG" in raised.value.message.upper()


async def test_a_disabled_monitor_command_is_refused(start_redis: StartRedis) -> None:
    url = start_redis("--rename-command", "MONITOR", "")
    with pytest.raises(RedisRefused) as raised:
        async with CacheAdvisor(url) as advisor:
            await advisor.analyze(window_s=0.2)
    assert raised.value.http_status == 409 and "MONITOR" in raised.value.message


async def test_refused_credentials_name_the_setting(start_redis: StartRedis) -> None:
    url = start_redis("--requirepass", "s3cret")
    wrong = url.replace("redis://", "redis://:wrong@")
    with pytest.raises(CacheSettingsInvalid) as raised:
        async with CacheAdvisor(wrong) as advisor:
            await advisor.analyze(window_s=0.1)
    assert raised.value.http_status == 422 and "optimization.cache.redisUrl" in raised.value.message
    assert "wrong" not in raised.value.message  # the password stays out of messages
    async with CacheAdvisor(url.replace("redis://", "redis://:s3cret@"), sample_rate=1.0) as advisor:
        report = await advisor.analyze(window_s=0.1)  # MONITOR authenticates on its own connection too
    assert report.redis.startswith("redis://***@")


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis://127.0.0.1:99999/0", "", None])
async def test_a_bad_url_names_the_setting(url: str | None, journal: OptimizationJournal) -> None:
    with pytest.raises(CacheSettingsInvalid) as raised:
        CacheAdvisor(url)
    assert raised.value.http_status == 422 and "optimization.cache.redisUrl" in raised.value.message
    with pytest.raises(CacheSettingsInvalid):
        await apply_change(journal, CacheChange(policy="allkeys-lru"), redis_url=url, service="s", target_hit_rate=0.9)
    settings = CacheOptimization(redis_url=None, sample_window=timedelta(seconds=1))
    with pytest.raises(CacheSettingsInvalid):
        CacheAdvisor.from_settings(settings)
