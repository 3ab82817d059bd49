"""Applying a cache recommendation to Redis, verified by measurement, and taking it back.

:func:`apply_change` follows the optimizer's journal protocol:

1. read the current values (``CONFIG GET``) and refuse a replica (409);
2. dry run: journal a ``dry_run`` entry with the change and the current values, change nothing;
3. measure the hit rate over ``window_s`` (INFO ``keyspace_hits``/``keyspace_misses`` deltas);
4. journal the change *before* making it, with ``undo`` holding the previous values;
5. ``CONFIG SET`` (``maxmemory-samples`` 10 by default: Redis's sampled LRU/LFU then stays
   close to the policy it approximates), journal ``measuring``, wait ``settle_s`` for the
   evictions and the refills, measure over ``window_s`` again;
6. keep it when the hit rate meets the target (within ``tolerance``) or is no worse than
   before (within ``tolerance``: a change that moves towards an unreachable target); else
   restore the previous values and journal ``rolled_back``.

Whatever happens after the change (an error, a cancellation), the previous values are
restored in a ``finally``; if even that fails, the entry stays ``applying``/``measuring``
and :func:`recover` (run at start-up) restores it later.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from actuators.optimizer.cache.connection import (
    NotEnoughTraffic,
    RedisRefused,
    connect,
    describe,
    redis_errors_wrapped,
)
from actuators.optimizer.cache.recommend import CacheRecommendation, EvictionPolicy
from actuators.optimizer.journal import Kind, Optimization, OptimizationJournal, Status
from tmsops.errors import PermanentError

ACTION = "config_set"
MIN_LOOKUPS = 100
DEFAULT_SAMPLES = 10


class NotACacheChange(PermanentError):
    http_status = 422


class CacheChange(BaseModel):
    """Settings to set; None leaves one as it is."""

    maxmemory_bytes: int | None = Field(None, ge=1)
    policy: EvictionPolicy | None = None
    samples: int | None = Field(DEFAULT_SAMPLES, ge=1, le=64)
    predicted_hit_rate: float | None = Field(None, ge=0, le=1)

    @classmethod
    def from_recommendation(cls, recommendation: CacheRecommendation) -> CacheChange:
        memory = recommendation.memory
        return cls(
            maxmemory_bytes=memory.maxmemory_bytes if memory else None,
            policy=recommendation.policy.policy,
            predicted_hit_rate=memory.predicted_hit_rate if memory else None,
        )

    def settings(self) -> dict[str, str]:
        """``CONFIG SET`` names and values."""
        values = {"maxmemory": self.maxmemory_bytes, "maxmemory-policy": self.policy, "maxmemory-samples": self.samples}
        return {name: str(value) for name, value in values.items() if value is not None}


class HitRateWindow(BaseModel):
    """INFO deltas over ``seconds``; the memory figures at its end."""

    seconds: float
    hits: int
    misses: int
    hit_rate: float | None
    used_memory: int
    evicted_keys: int
    keys: int

    @property
    def lookups(self) -> int:
        return self.hits + self.misses


async def measure_hit_rate(client: aioredis.Redis, window_s: float) -> HitRateWindow:
    """The hit rate of every lookup the server served during the next ``window_s`` seconds."""
    start = await client.info("stats")
    await asyncio.sleep(window_s)
    end = await client.info("stats")
    memory = await client.info("memory")
    hits = int(end["keyspace_hits"]) - int(start["keyspace_hits"])
    misses = int(end["keyspace_misses"]) - int(start["keyspace_misses"])
    return HitRateWindow(
        seconds=window_s,
        hits=hits,
        misses=misses,
        hit_rate=round(hits / (hits + misses), 5) if hits + misses else None,
        used_memory=int(memory["used_memory"]),
        evicted_keys=int(end["evicted_keys"]) - int(start["evicted_keys"]),
        keys=int(await client.dbsize()),
    )


def verdict(before: HitRateWindow, after: HitRateWindow, target: float, tolerance: float) -> tuple[bool, str]:
    """Keep the change? And why."""
    if after.hit_rate is None or after.lookups < MIN_LOOKUPS:
        return False, f"only {after.lookups} lookups after the change: too few to verify it"
    was = f"{before.hit_rate:.2%}" if before.hit_rate is not None else "unknown"
    now = f"hit rate {after.hit_rate:.2%} (before {was}, target {target:.0%}, tolerance {tolerance:.0%})"
    if after.hit_rate >= target - tolerance:
        return True, f"{now}: meets the target"
    if before.hit_rate is not None and after.hit_rate >= before.hit_rate - tolerance:
        return True, f"{now}: below the target but no worse than before"
    return False, f"{now}: worse than before and below the target"


async def apply_change(
    journal: OptimizationJournal,
    change: CacheChange,
    *,
    redis_url: str | None,
    service: str,
    target_hit_rate: float,
    dry_run: bool = False,
    window_s: float = 30.0,
    settle_s: float = 10.0,
    tolerance: float = 0.02,
) -> Optimization:
    """Apply ``change`` to the Redis at ``redis_url``, measured and journalled; the final journal entry.

    Raises :class:`CacheSettingsInvalid` (422), :class:`RedisUnavailable` (503),
    :class:`RedisRefused` (409: a replica, CONFIG disabled), :class:`NotEnoughTraffic` (409:
    too few lookups before the change to compare with; nothing changed).
    """
    client = connect(redis_url)
    where = describe(redis_url or "")
    try:
        current = await _current_settings(client, where, list(change.settings()))
        subject = ", ".join(f"{name}={value}" for name, value in change.settings().items())
        document = {
            "redis": where,
            "settings": change.settings(),
            "target_hit_rate": target_hit_rate,
            "predicted_hit_rate": change.predicted_hit_rate,
        }
        undo = {"redis": where, "settings": current}
        begin = functools.partial(journal.begin, Kind.CACHE, service, subject, ACTION, change=document, undo=undo)
        if dry_run:
            return await asyncio.to_thread(
                begin, before={"settings": current}, status=Status.DRY_RUN, reason="dry run: nothing was changed"
            )
        with redis_errors_wrapped("measure the hit rate before the change", where):
            before = await measure_hit_rate(client, window_s)
        if before.lookups < MIN_LOOKUPS:
            raise NotEnoughTraffic(
                f"only {before.lookups} lookups on {where} in {window_s:g} s: too few to compare a change against; "
                "retry while the service has traffic",
                details={"redis": where, "lookups": before.lookups},
            )
        entry = await asyncio.to_thread(begin, before={"settings": current, **before.model_dump()})
        measurement = _Measurement(before, target_hit_rate, window_s, settle_s, tolerance)
        return await _change_and_verify(journal, entry, client, where, change, measurement)
    finally:
        await client.aclose()


async def _current_settings(client: aioredis.Redis, where: str, names: list[str]) -> dict[str, str]:
    """The current values of ``names``; a replica is refused (its primary's settings are the ones to change)."""
    with redis_errors_wrapped("read the cache settings", where):
        role = (await client.info("replication")).get("role", "master")
        current = await _config_get(client, names)
    if role != "master":
        raise RedisRefused(
            f"cannot change the cache settings of {where}: it is a read-only {role} (replica); "
            "apply them on its primary",
            details={"redis": where, "role": role},
        )
    return current


@dataclass(frozen=True)
class _Measurement:
    before: HitRateWindow
    target: float
    window_s: float
    settle_s: float
    tolerance: float


async def _change_and_verify(
    journal: OptimizationJournal,
    entry: Optimization,
    client: aioredis.Redis,
    where: str,
    change: CacheChange,
    measurement: _Measurement,
) -> Optimization:
    """Make the change and keep or restore it; the previous values are restored on any error."""
    attempted: list[str] = []
    applied = 0
    decided = False
    try:
        with redis_errors_wrapped("change the cache settings", where):
            for name, value in change.settings().items():
                attempted.append(name)
                await client.config_set(name, value)
                applied += 1
        await asyncio.to_thread(journal.update, entry.id, status=Status.MEASURING)
        with redis_errors_wrapped("measure the hit rate after the change", where):
            await asyncio.sleep(measurement.settle_s)
            after = await measure_hit_rate(client, measurement.window_s)
        keep, reason = verdict(measurement.before, after, measurement.target, measurement.tolerance)
        if keep:
            decided = True
            return await asyncio.to_thread(
                journal.update, entry.id, status=Status.KEPT, after=after.model_dump(), reason=reason
            )
        with redis_errors_wrapped("restore the previous cache settings", where):
            await _config_set(client, entry.undo["settings"])
        decided = True
        return await asyncio.to_thread(
            journal.update, entry.id, status=Status.ROLLED_BACK, after=after.model_dump(), reason=reason
        )
    finally:
        if not decided:
            await _restore_after_error(journal, entry, client, attempted, nothing_set=applied == 0)


async def _restore_after_error(
    journal: OptimizationJournal,
    entry: Optimization,
    client: aioredis.Redis,
    attempted: list[str],
    *,
    nothing_set: bool,
) -> None:
    """Best effort; the entry ends ``failed`` when no value had been set, else ``rolled_back``.

    When restoring fails too, the entry stays unfinished for :func:`recover` to restore at start-up.
    """
    previous = {name: value for name, value in entry.undo["settings"].items() if name in attempted}
    try:
        await _config_set(client, previous)
    except Exception as error:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(
                journal.update, entry.id, reason=f"interrupted; restoring the previous values failed too: {error}"
            )
        return
    status = Status.FAILED if nothing_set else Status.ROLLED_BACK
    with contextlib.suppress(Exception):
        await asyncio.to_thread(
            journal.update, entry.id, status=status, reason="interrupted by an error: previous values restored"
        )


async def rollback(
    journal: OptimizationJournal, optimization: Optimization, *, redis_url: str | None, reason: str = "requested"
) -> Optimization:
    """Restore the values ``optimization`` replaced (its ``undo``); the updated entry.

    Entries with nothing in place (``dry_run``, ``failed``, ``rolled_back``) are returned as
    they are. Raises :class:`NotACacheChange` (422) for another kind of optimization, and the
    connection errors of :func:`apply_change`.
    """
    if optimization.kind is not Kind.CACHE:
        raise NotACacheChange(
            f"optimization {optimization.id} is a {optimization.kind.value} change, not a cache one",
            details={"id": optimization.id},
        )
    if optimization.status in (Status.DRY_RUN, Status.FAILED, Status.ROLLED_BACK):
        return optimization
    client = connect(redis_url)
    where = describe(redis_url or "")
    try:
        with redis_errors_wrapped("restore the previous cache settings", where):
            await _config_set(client, optimization.undo.get("settings", {}))
    finally:
        await client.aclose()
    return await asyncio.to_thread(
        journal.update, optimization.id, status=Status.ROLLED_BACK, reason=f"rolled back: {reason}"
    )


async def recover(journal: OptimizationJournal, *, redis_url: str | None) -> list[Optimization]:
    """At start-up: roll back every cache change a crash left without a verdict."""
    unfinished = [entry for entry in await asyncio.to_thread(journal.unfinished) if entry.kind is Kind.CACHE]
    return [
        await rollback(journal, entry, redis_url=redis_url, reason="interrupted before a verdict (restart)")
        for entry in unfinished
    ]


async def _config_get(client: aioredis.Redis, names: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name in names:
        reply: dict[Any, Any] = await client.config_get(name)
        for key, value in reply.items():
            values[_text(key)] = _text(value)
    return {name: values[name] for name in names if name in values}


async def _config_set(client: aioredis.Redis, settings: dict[str, str]) -> None:
    for name, value in settings.items():
        await client.config_set(name, value)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
