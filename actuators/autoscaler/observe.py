"""What the loop knows about a service now: replicas, CPU and memory utilisation, demand.

Utilisation is usage over the ready replicas' requests (the HPA's definition); without a
request it is unknown. Demand (requests/s) comes from the target's request counter (the
fleet's proxy) between two reads, or from Prometheus when the target has no counter; it is
dated at the middle of the window it was measured over, so the history holds each step's own
demand (dated at the end, every point would describe the step before its own).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from actuators.autoscaler.policy import Observation
from tmsops.metrics_source import PrometheusSource
from tmsops.targets.base import Target
from tmsops.targets.model import ServiceStatus, ServiceUsage


@dataclass
class Counted:
    at: float
    total: int


class Observer:
    def __init__(self, target: Target, metrics: PrometheusSource | None = None) -> None:
        self._target = target
        self._metrics = metrics
        self._counted: dict[str, Counted] = {}

    async def observe(self, service: str) -> tuple[Observation, ServiceStatus]:
        status = await self._target.service(service)
        usage = await self._target.usage(service)
        now = time.monotonic()
        demand, window_s = await self._demand(service, usage, now)
        observation = Observation(
            at=now,
            replicas=status.replicas,
            cpu_utilization=cpu_utilization(status, usage),
            memory_utilization=memory_utilization(status, usage),
            demand=demand,
            demand_at=now - window_s / 2,
            min_replicas=status.min_replicas,
            max_replicas=status.max_replicas,
        )
        return observation, status

    async def _demand(self, service: str, usage: ServiceUsage, now: float) -> tuple[float | None, float]:
        """Requests/s and the length of the window it was measured over, ending now."""
        if usage.requests_total is None:
            if self._metrics is None:
                return None, 0.0
            window_s = self._metrics.templates.window.total_seconds()
            return (await self._metrics.service_snapshot(service)).requests_per_second, window_s
        previous = self._counted.get(service)
        self._counted[service] = Counted(now, usage.requests_total)
        if previous is None or now <= previous.at or usage.requests_total < previous.total:
            return None, 0.0
        return (usage.requests_total - previous.total) / (now - previous.at), now - previous.at


def cpu_utilization(status: ServiceStatus, usage: ServiceUsage) -> float | None:
    request = status.resources.cpu_request
    if not request or not usage.replicas:
        return None
    return usage.cpu_cores / (len(usage.replicas) * request) * 100


def memory_utilization(status: ServiceStatus, usage: ServiceUsage) -> float | None:
    request = status.resources.memory_request
    if not request or not usage.replicas:
        return None
    return usage.memory_bytes / (len(usage.replicas) * request) * 100
