"""A discrete-time cluster simulator: replays a demand trace through a scaling controller.

Time runs in trace seconds. The trace gives demand (requests/s) at ``step_s`` intervals; the
demand between two points is interpolated linearly, and a tick's demand is the interpolated
demand at the tick's midpoint. The simulation advances in ticks of ``tick_s`` seconds (the
backtest uses the decision interval); at the end of every tick the controller sees an
:class:`~actuators.autoscaler.policy.Observation` and returns the desired replica count.

The cluster model (the same for every controller):

- A ready replica serves up to ``mu`` requests/s at 100% CPU. A replica asked for at ``t``
  serves from ``t + startup_s`` on; a scale-down is immediate (starting replicas go first,
  newest first).
- Queueing is a fluid model with a backlog: per tick, ``served = min(demand + backlog,
  ready x mu)``; what is not served waits in the backlog; requests that would wait longer
  than ``timeout_s`` are dropped (counted, never served).
- The latency of a tick is ``service_time x 1/(1 - rho)`` (an M/M/1-like factor, capped at
  ``max_queue_factor``) plus ``backlog / (ready x mu)``, the time to drain the backlog;
  ``rho = served / (ready x mu)``. A tick whose latency is over ``slo_s`` counts as SLO
  violation time. With the defaults (50 ms, SLO 250 ms) the SLO holds up to rho = 0.8.
- The CPU utilisation the controller sees is ``served / (replicas x mu) x 100`` where
  ``replicas`` counts the starting replicas at 0% (what the Kubernetes HPA assumes of
  unready pods when scaling up); while no replica is starting it is ``served / (ready x mu)``.
  The observed demand is the served rate (a request counter counts handled requests);
  memory utilisation is not reported.
- Cost is replica time: every replica asked for counts from the moment it is asked for
  (a starting pod holds its node resources too) until it is removed.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from actuators.autoscaler.policy import ForecastView, Observation, ServicePolicy


@dataclass(frozen=True)
class ClusterModel:
    """The simulated cluster: per-replica capacity, start-up delay, queueing and the SLO."""

    mu: float
    startup_s: float = 120.0
    service_time_s: float = 0.05
    max_queue_factor: float = 20.0
    timeout_s: float = 30.0
    slo_s: float = 0.25

    def __post_init__(self) -> None:
        if not self.mu > 0:
            raise ValueError(f"per-replica capacity must be > 0, got {self.mu}")
        if self.startup_s < 0 or self.service_time_s <= 0 or self.max_queue_factor < 1:
            raise ValueError("startup_s >= 0, service_time_s > 0 and max_queue_factor >= 1 are required")


class ForecastSource(Protocol):
    def view(self, now: float) -> ForecastView | None:
        """The newest forecast available at ``now``, or None."""
        ...


class Controller(Protocol):
    def replica_ready(self, startup_s: float) -> None:
        """A replica became ready ``startup_s`` seconds after it was asked for."""
        ...

    def decide(self, observation: Observation) -> int:
        """The desired replica count after this observation."""
        ...


@dataclass
class ForecastTable:
    """Forecasts made at trace points ``first``, ``first + 1``, ...: row ``j`` is made at point ``first + j``.

    A forecast made at point ``i`` (time ``i x step_s``) uses the demand up to that point and
    covers points ``i + 1 .. i + horizon``; it is the newest one from ``i x step_s`` on.
    """

    step_s: float
    first: int
    p10: np.ndarray
    p50: np.ndarray
    p90: np.ndarray
    _views: dict[int, ForecastView] = field(default_factory=dict, repr=False)

    def view(self, now: float) -> ForecastView | None:
        row = math.floor(now / self.step_s + 1e-9) - self.first
        if not 0 <= row < len(self.p50):
            return None
        if row not in self._views:
            self._views = {row: self._make_view(row)}  # decisions move forward: keep one
        return self._views[row]

    def _make_view(self, row: int) -> ForecastView:
        at = (self.first + row) * self.step_s
        return ForecastView(at, self.step_s, tuple(self.p10[row]), tuple(self.p50[row]), tuple(self.p90[row]))

    @classmethod
    def oracle(cls, values: np.ndarray, step_s: float, horizon: int = 12) -> ForecastTable:
        """The true future demand as the forecast, from every point that has a future (p10 = p50 = p90)."""
        padded = np.concatenate([values, np.full(horizon, values[-1])])
        rows = len(values) - 1
        future = padded[1 + np.arange(rows)[:, None] + np.arange(horizon)[None, :]]
        return cls(step_s, 0, future, future, future)


@dataclass
class StaticController:
    """A fixed replica count; never changes it."""

    replicas: int

    def replica_ready(self, startup_s: float) -> None:
        """Nothing to learn."""

    def decide(self, observation: Observation) -> int:
        return self.replicas


@dataclass
class PolicyController:
    """Decisions of a :class:`ServicePolicy`, with forecasts from ``forecasts`` when given."""

    policy: ServicePolicy
    forecasts: ForecastSource | None = None
    no_forecast: str = "no forecast"
    decisions: int = 0
    with_forecast: int = 0

    def replica_ready(self, startup_s: float) -> None:
        self.policy.record_startup(startup_s)

    def decide(self, observation: Observation) -> int:
        view = self.forecasts.view(observation.at) if self.forecasts is not None else None
        decision = self.policy.decide(observation, view, None if view is not None else self.no_forecast)
        self.decisions += 1
        self.with_forecast += decision.predictive is not None
        return decision.desired


@dataclass
class Cluster:
    """Ready replicas, starting replicas (asked-for time, ready time; oldest first) and the backlog."""

    model: ClusterModel
    ready: int
    starting: deque[tuple[float, float]] = field(default_factory=deque)
    backlog: float = 0.0
    dropped: float = 0.0

    @property
    def replicas(self) -> int:
        return self.ready + len(self.starting)

    def activate(self, now: float) -> list[float]:
        """Make the replicas due by ``now`` ready; their start-up times."""
        started = []
        while self.starting and self.starting[0][1] <= now + 1e-9:
            asked, ready_at = self.starting.popleft()
            started.append(ready_at - asked)
            self.ready += 1
        return started

    def serve(self, demand: float, tick_s: float) -> tuple[float, float]:
        """Serve one tick of ``demand`` requests/s; (served requests/s, latency in s)."""
        capacity = self.ready * self.model.mu
        work = self.backlog + demand * tick_s
        served = min(work, capacity * tick_s)
        self.backlog = work - served
        limit = capacity * self.model.timeout_s
        if self.backlog > limit:
            self.dropped += self.backlog - limit
            self.backlog = limit
        return served / tick_s, self._latency(served / tick_s, capacity)

    def _latency(self, served_rate: float, capacity: float) -> float:
        model = self.model
        if capacity <= 0:
            return model.service_time_s * model.max_queue_factor + model.timeout_s
        rho = served_rate / capacity
        factor = model.max_queue_factor if rho >= 1 else min(1 / (1 - rho), model.max_queue_factor)
        return model.service_time_s * factor + self.backlog / capacity

    def scale_to(self, desired: int, now: float) -> None:
        """Remove replicas at once (starting ones first) or ask for new ones, ready after the start-up delay."""
        while self.replicas > desired and self.starting:
            self.starting.pop()
        if self.replicas > desired:
            self.ready = desired
        for _ in range(desired - self.replicas):
            self.starting.append((now, now + self.model.startup_s))


@dataclass(frozen=True)
class SimResult:
    """Per-tick latency and replica count of one run, and what the controller did."""

    tick_s: float
    slo_s: float
    latency_s: np.ndarray
    replicas: np.ndarray
    scaling_actions: int
    dropped_requests: float

    @property
    def slo_violation_minutes(self) -> float:
        return float(np.count_nonzero(self.latency_s > self.slo_s) * self.tick_s / 60)

    @property
    def replica_hours(self) -> float:
        return float(self.replicas.sum() * self.tick_s / 3600)

    @property
    def p95_latency_ms(self) -> float:
        return float(np.percentile(self.latency_s, 95) * 1000) if self.latency_s.size else 0.0


def tick_demand(values: np.ndarray, step_s: float, tick_s: float) -> np.ndarray:
    """The interpolated demand at the midpoint of every whole tick of the trace."""
    duration = (len(values) - 1) * step_s
    ticks = math.floor(duration / tick_s + 1e-9)
    knots = np.arange(len(values)) * step_s
    return np.interp((np.arange(ticks) + 0.5) * tick_s, knots, values)


def simulate(
    values: np.ndarray, step_s: float, model: ClusterModel, controller: Controller, tick_s: float, initial: int
) -> SimResult:
    """Replay ``values`` (requests/s every ``step_s``) from ``initial`` ready replicas; one decision per tick."""
    if tick_s <= 0 or step_s <= 0 or initial < 1:
        raise ValueError("tick_s and step_s must be > 0 and initial >= 1")
    demand = tick_demand(values, step_s, tick_s)
    cluster = Cluster(model, initial)
    latency = np.empty(len(demand))
    replicas = np.empty(len(demand), dtype=np.int64)
    actions = 0
    for tick, rate in enumerate(demand):
        start = tick * tick_s
        for seconds in cluster.activate(start):
            controller.replica_ready(seconds)
        replicas[tick] = cluster.replicas
        served, latency[tick] = cluster.serve(float(rate), tick_s)
        now = start + tick_s
        desired = max(controller.decide(_observe(now, cluster, served)), 1)
        if desired != cluster.replicas:
            actions += 1
            cluster.scale_to(desired, now)
    return SimResult(tick_s, model.slo_s, latency, replicas, actions, cluster.dropped)


def _observe(now: float, cluster: Cluster, served: float) -> Observation:
    cpu = served / (cluster.replicas * cluster.model.mu) * 100
    return Observation(at=now, replicas=cluster.replicas, cpu_utilization=cpu, demand=served)
