"""The fleet's book of faults: which are in effect, their effects, and their end.

A fault stops having any effect at its expiry, checked on every request, whether or not
the reaper has run; the reaper then undoes what lives outside the proxy (fault workers,
paused replicas) through the fault's undo callback. Ended faults are kept for a while so
that reverting one twice, or after it expired, is not an error.
"""

from __future__ import annotations

import random
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tmsops.fleet.proxy import NO_EFFECTS, ProxyEffects
from tmsops.targets.base import UnknownFault
from tmsops.targets.model import (
    BandwidthLimit,
    ConnectionReset,
    Fault,
    FaultRequest,
    FaultState,
    NetworkLatency,
    ServiceUnavailable,
    SlowDependency,
)

ENDED_KEPT = 1000
Undo = Callable[[], Awaitable[None]]


@dataclass
class Entry:
    fault: Fault
    undo: Undo | None

    def applies_to(self, service: str, replica: str | None, now: datetime) -> bool:
        fault = self.fault
        if fault.service != service or fault.state is not FaultState.ACTIVE or now >= fault.expires_at:
            return False
        return replica is None or not fault.replicas or replica in fault.replicas


def new_fault(request: FaultRequest, replicas: list[str], state: FaultState = FaultState.ACTIVE) -> Fault:
    now = datetime.now(UTC)
    return Fault(
        id=uuid.uuid4().hex[:12],
        service=request.service,
        fault=request.fault,
        replicas=replicas,
        injected_at=now,
        expires_at=now + timedelta(seconds=request.ttl_s),
        state=state,
    )


class FaultBook:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._active: dict[str, Entry] = {}
        self._ended: OrderedDict[str, Fault] = OrderedDict()
        self._rng = rng or random.Random()

    def add(self, fault: Fault, undo: Undo | None = None) -> None:
        self._active[fault.id] = Entry(fault, undo)

    def active(self, service: str | None = None) -> list[Fault]:
        return [entry.fault for entry in self._active.values() if service is None or entry.fault.service == service]

    def all(self, service: str | None = None) -> list[Fault]:
        ended = [fault for fault in self._ended.values() if service is None or fault.service == service]
        return [*self.active(service), *ended]

    def get(self, fault_id: str) -> Fault:
        entry = self._active.get(fault_id)
        if entry is not None:
            return entry.fault
        if fault_id in self._ended:
            return self._ended[fault_id]
        raise UnknownFault(fault_id)

    async def revert(self, fault_id: str) -> Fault:
        """End the fault now; a fault already ended is returned as it is."""
        entry = self._active.get(fault_id)
        if entry is None:
            return self.get(fault_id)
        await self._end(entry, FaultState.REVERTED)
        return self._ended[fault_id]

    async def reap(self) -> list[Fault]:
        """End every fault whose time is up; the faults ended."""
        now = datetime.now(UTC)
        expired = [entry for entry in self._active.values() if now >= entry.fault.expires_at]
        for entry in expired:
            await self._end(entry, FaultState.EXPIRED)
        return [self._ended[entry.fault.id] for entry in expired]

    async def revert_all(self) -> list[Fault]:
        entries = list(self._active.values())
        for entry in entries:
            await self._end(entry, FaultState.REVERTED)
        return [self._ended[entry.fault.id] for entry in entries]

    async def _end(self, entry: Entry, state: FaultState) -> None:
        if entry.undo is not None:
            await entry.undo()
        self._active.pop(entry.fault.id, None)
        self._ended[entry.fault.id] = entry.fault.model_copy(update={"state": state})
        while len(self._ended) > ENDED_KEPT:
            self._ended.popitem(last=False)

    def proxy_effects(self, service: str, replica: str) -> ProxyEffects:
        """The combined network effects on one request to ``replica`` of ``service``, sampled now."""
        if not self._active:
            return NO_EFFECTS
        now = datetime.now(UTC)
        entries = [entry for entry in self._active.values() if entry.applies_to(service, replica, now)]
        if not entries:
            return NO_EFFECTS
        delay_s, reset, error_status, rate = 0.0, False, None, None
        for entry in entries:
            spec = entry.fault.fault
            if isinstance(spec, NetworkLatency):
                delay_s += self._jittered(spec.latency_ms, spec.jitter_ms)
            elif isinstance(spec, BandwidthLimit):
                limit = spec.rate_kbps * 1000
                rate = limit if rate is None else min(rate, limit)
            elif isinstance(spec, ConnectionReset):
                reset = reset or self._rng.random() < spec.probability
            elif isinstance(spec, ServiceUnavailable) and spec.mode != "pause" and self._rng.random() < spec.error_rate:
                if spec.mode == "refuse":
                    reset = True
                else:
                    error_status = spec.status
        return ProxyEffects(delay_s=delay_s, reset=reset, error_status=error_status, rate_bytes_per_s=rate)

    def dependency_delay(self, service: str, dependency: str) -> float:
        """Seconds each chunk sent by ``service`` to ``dependency`` waits now."""
        now = datetime.now(UTC)
        delay_s = 0.0
        for entry in self._active.values():
            spec = entry.fault.fault
            if (
                isinstance(spec, SlowDependency)
                and spec.dependency == dependency
                and entry.applies_to(service, None, now)
            ):
                delay_s += self._jittered(spec.latency_ms, spec.jitter_ms)
        return delay_s

    def _jittered(self, latency_ms: float, jitter_ms: float) -> float:
        return max(0.0, latency_ms + self._rng.uniform(-jitter_ms, jitter_ms)) / 1000
