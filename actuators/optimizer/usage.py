"""Usage history for right-sizing: per-replica CPU and memory samples over a window.

Two sources, one result (:class:`UsageWindow`):

- :class:`UsageSampler` polls ``Target.usage`` (and ``Target.service`` for restarts) every
  interval into a bounded in-memory window per service. It needs nothing but the target;
  its history starts when the optimizer starts. Demand (requests/s) comes from the target's
  request counter between two polls, where the target counts (the fleet's proxy does).
- :func:`prometheus_usage` reads the target kind's templated ``cpuCores``, ``memoryBytes``,
  ``readyReplicas`` and ``requestsPerSecond`` over a range. The templates give service
  totals, so a per-replica value is the total over the ready replicas at that step: one
  replica hotter than its siblings is averaged in. Restarts come from the restart counter
  of the target kind (the fleet's, or kube-state-metrics').

:func:`collect_usage` picks the source by what is configured: Prometheus when there is one
(its history outlives the optimizer), the sampler otherwise or when Prometheus has less.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import Field

from actuators.optimizer.models import CamelModel
from tmsops.errors import PermanentError, TemporaryError, TmsopsError
from tmsops.fleet import metrics as fleet_metrics
from tmsops.metrics_source import PrometheusSource
from tmsops.promql import escape_regex, escape_string, render_window
from tmsops.targets.base import Target
from tmsops.targets.model import ServiceStatus, ServiceUsage

DEFAULT_INTERVAL = timedelta(seconds=15)
DEFAULT_KEEP = timedelta(days=1)
# Per service: a day at 15 s with 3 replicas is 17,280 samples.
DEFAULT_MAX_SAMPLES = 20_000
MEAN_REPLICA = "mean"

log = logging.getLogger("tmsops.optimizer")

Source = Literal["sampler", "prometheus"]


class ReplicaSample(CamelModel):
    """One replica's usage at one time; ``replica`` is ``mean`` for a per-replica mean from Prometheus."""

    at: datetime
    replica: str
    cpu_cores: float
    memory_bytes: int


class UsageWindow(CamelModel):
    """What a recommendation is computed from: samples, demand (requests/s) and restarts in the window."""

    service: str
    source: Source
    start: datetime | None = None
    end: datetime | None = None
    samples: list[ReplicaSample] = Field(default_factory=list)
    demand: list[float] = Field(default_factory=list)
    restarts: int = 0
    note: str = ""

    @property
    def cpu_cores(self) -> list[float]:
        return [sample.cpu_cores for sample in self.samples]

    @property
    def memory_bytes(self) -> list[int]:
        return [sample.memory_bytes for sample in self.samples]

    @property
    def replicas_seen(self) -> int:
        return len({sample.replica for sample in self.samples})


@dataclass
class UsageHistory:
    """One service's samples, restarts and demand, kept for ``keep`` and at most ``max_samples``."""

    service: str
    keep: timedelta = DEFAULT_KEEP
    max_samples: int = DEFAULT_MAX_SAMPLES
    # (unix seconds, replica, cores, bytes): tuples keep a day of samples small.
    samples: deque[tuple[float, str, float, int]] = field(default_factory=deque)
    restart_events: deque[tuple[float, int]] = field(default_factory=deque)
    demand: deque[tuple[float, float]] = field(default_factory=deque)
    _restarts_seen: dict[str, int] = field(default_factory=dict)
    _counted: tuple[float, int] | None = None

    def add(self, usage: ServiceUsage, status: ServiceStatus | None = None) -> None:
        """Record one poll: every replica's usage, restarts since the last poll, and demand since then."""
        at = usage.at.timestamp()
        for replica in usage.replicas:
            self.samples.append((at, replica.replica, replica.cpu_cores, replica.memory_bytes))
        if status is not None:
            self._count_restarts(at, status)
        if usage.requests_total is not None:
            self._count_demand(at, usage.requests_total)
        self._trim(at)

    def window(self) -> UsageWindow:
        samples = [
            ReplicaSample(at=datetime.fromtimestamp(at, UTC), replica=replica, cpu_cores=cpu, memory_bytes=memory)
            for at, replica, cpu, memory in self.samples
        ]
        return UsageWindow(
            service=self.service,
            source="sampler",
            start=samples[0].at if samples else None,
            end=samples[-1].at if samples else None,
            samples=samples,
            demand=[rate for _, rate in self.demand],
            restarts=sum(count for _, count in self.restart_events),
        )

    def _count_restarts(self, at: float, status: ServiceStatus) -> None:
        for pod in status.pods:
            seen = self._restarts_seen.get(pod.id)
            if seen is not None and pod.restarts > seen:
                self.restart_events.append((at, pod.restarts - seen))
            self._restarts_seen[pod.id] = pod.restarts
        running = {pod.id for pod in status.pods}
        for gone in set(self._restarts_seen) - running:
            del self._restarts_seen[gone]

    def _count_demand(self, at: float, total: int) -> None:
        previous, self._counted = self._counted, (at, total)
        if previous is not None and at > previous[0] and total >= previous[1]:
            self.demand.append((at, (total - previous[1]) / (at - previous[0])))

    def _trim(self, now: float) -> None:
        oldest = now - self.keep.total_seconds()
        while self.samples and (self.samples[0][0] < oldest or len(self.samples) > self.max_samples):
            self.samples.popleft()
        for events in (self.restart_events, self.demand):
            while events and events[0][0] < oldest:
                events.popleft()


class UsageSampler:
    """Polls ``target`` every ``interval`` for each of ``services`` (every service of the target when None)."""

    def __init__(
        self,
        target: Target,
        *,
        services: Sequence[str] | None = None,
        interval: timedelta = DEFAULT_INTERVAL,
        keep: timedelta = DEFAULT_KEEP,
        max_samples: int = DEFAULT_MAX_SAMPLES,
    ) -> None:
        if interval <= timedelta(0):
            raise PermanentError(f"the sampling interval must be positive, got {interval}")
        self._target = target
        self._services = list(services) if services is not None else None
        self.interval = interval
        self._keep = keep
        self._max_samples = max_samples
        self._histories: dict[str, UsageHistory] = {}
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    async def sample_once(self) -> None:
        """One poll of every service; a service that cannot be read is logged and skipped."""
        names = self._services
        if names is None:
            try:
                names = [status.name for status in await self._target.list_services()]
            except TmsopsError as error:
                self._failed("cannot list the target's services", error)
                return
        for name in names:
            await self._sample(name)

    async def run(self) -> None:
        """Sample forever, every ``interval``."""
        while True:
            await self.sample_once()
            await asyncio.sleep(self.interval.total_seconds())

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="usage sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def window(self, service: str) -> UsageWindow:
        """The service's samples so far (an empty window when it was never sampled)."""
        history = self._histories.get(service)
        if history is None:
            return UsageWindow(service=service, source="sampler", note=f"{service} has not been sampled yet")
        return history.window()

    async def _sample(self, name: str) -> None:
        try:
            status = await self._target.service(name)
            usage = await self._target.usage(name)
        except TmsopsError as error:
            self._failed(f"cannot sample {name}", error)
            return
        history = self._histories.get(name)
        if history is None:
            history = self._histories[name] = UsageHistory(name, keep=self._keep, max_samples=self._max_samples)
        history.add(usage, status)
        self.last_error = None

    def _failed(self, what: str, error: TmsopsError) -> None:
        self.last_error = f"{what}: {error.message}"
        log.warning("%s", self.last_error)


async def prometheus_usage(
    source: PrometheusSource, service: str, *, start: datetime, end: datetime, step: timedelta
) -> UsageWindow:
    """Per-replica means from the templated service totals over ``[start, end]``, and restarts in it."""
    names = ("cpuCores", "memoryBytes", "readyReplicas", "requestsPerSecond")
    series = await asyncio.gather(*(source.service_history(service, name, start, end, step) for name in names))
    cpu, memory, ready, demand = ({at: value for at, value in points} for points in series)
    samples = [
        ReplicaSample(
            at=at, replica=MEAN_REPLICA, cpu_cores=cpu[at] / ready[at], memory_bytes=round(memory[at] / ready[at])
        )
        for at in sorted(set(cpu) & set(memory) & set(ready))
        if _finite(cpu[at], memory[at], ready[at]) and ready[at] > 0
    ]
    restarts = await _prometheus_restarts(source, service, start, end)
    return UsageWindow(
        service=service,
        source="prometheus",
        start=samples[0].at if samples else None,
        end=samples[-1].at if samples else None,
        samples=samples,
        demand=[value for value in demand.values() if _finite(value)],
        restarts=restarts,
        note="per-replica values are service totals over ready replicas (Prometheus)",
    )


def restarts_query(kind: str, service: str, namespace: str, window: timedelta) -> str:
    """PromQL for the replicas' restarts of ``service`` over ``window``, per target kind."""
    duration = render_window(window)
    if kind == "kubernetes":
        pods = (
            f'namespace="{escape_string(namespace)}",pod=~"{escape_string(escape_regex(service))}-[a-z0-9]+-[a-z0-9]+"'
        )
        return f"sum(increase(kube_pod_container_status_restarts_total{{{pods}}}[{duration}]))"
    return f'sum(increase({fleet_metrics.RESTARTS}_total{{service="{escape_string(service)}"}}[{duration}]))'


async def _prometheus_restarts(source: PrometheusSource, service: str, start: datetime, end: datetime) -> int:
    templates = source.templates
    promql = restarts_query(templates.kind, service, templates.namespace, max(end - start, timedelta(seconds=1)))
    found = await source.query(promql, end)
    value = found[0].value if found else 0.0
    return round(value) if math.isfinite(value) else 0


async def collect_usage(
    service: str,
    *,
    sampler: UsageSampler | None = None,
    prometheus: PrometheusSource | None = None,
    lookback: timedelta = DEFAULT_KEEP,
    step: timedelta | None = None,
    end: datetime | None = None,
) -> UsageWindow:
    """The usage window of ``service`` from what is configured: Prometheus first, the sampler otherwise.

    When Prometheus is configured but down, or holds fewer samples than the sampler, the
    sampler's window is used and its ``note`` says why. Raises PermanentError when neither
    source is configured, and Prometheus's error when it fails and there is no sampler.
    """
    if sampler is None and prometheus is None:
        raise PermanentError("no usage source: configure Prometheus (prometheusUrl) or run a usage sampler")
    if prometheus is None:
        assert sampler is not None
        return sampler.window(service)
    finish = end or datetime.now(UTC)
    range_step = step or max(timedelta(seconds=15), lookback / 2000)
    try:
        window = await prometheus_usage(prometheus, service, start=finish - lookback, end=finish, step=range_step)
    except TemporaryError as error:
        if sampler is None:
            raise
        local = sampler.window(service)
        return local.model_copy(update={"note": f"Prometheus unavailable ({error.message}); usage from the sampler"})
    if sampler is not None:
        local = sampler.window(service)
        if len(local.samples) > len(window.samples):
            note = f"Prometheus had {len(window.samples)} samples, the sampler {len(local.samples)}: sampler used"
            return local.model_copy(update={"note": note})
    return window


def _finite(*values: float) -> bool:
    return all(math.isfinite(value) for value in values)
