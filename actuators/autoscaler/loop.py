"""The control loop: every interval, observe each service, forecast its demand, decide, record, act.

Forecasts for all services come from one batched call to the model server, made when a new
step of demand history is complete. When the model server is down (or its circuit is open)
the loop goes on with reactive decisions, says so in each record and in ``/health``.

Changes to one service are serialised: the loop does not start a scale while another is in
progress for that service (its record says so), and ``POST /scale`` waits its turn. After a
scale-up the loop measures how long the new replicas took to be ready; that start-up time
sets how far ahead the next decisions look.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from actuators.autoscaler.backfill import demand_before
from actuators.autoscaler.history import DemandHistory
from actuators.autoscaler.observe import Observer
from actuators.autoscaler.policy import (
    Decision,
    ForecastView,
    Observation,
    PolicyConfig,
    ServicePolicy,
    replica_bounds,
)
from actuators.autoscaler.records import DecisionStore
from tmsops.errors import TemporaryError, TmsopsError
from tmsops.metrics_source import PrometheusSource
from tmsops.model_client import ModelClient, ModelRequestError, SeriesIn
from tmsops.settings import AutoscalerSettings
from tmsops.targets.base import Target
from tmsops.tracing import span

READY_WAIT_S = 300.0
BACKFILL_RETRY_S = 60.0
ACTUALS_KEPT = 2880
FORECASTS_KEPT = 288

log = logging.getLogger("tmsops.autoscaler")


@dataclass
class ServiceState:
    policy: ServicePolicy
    history: DemandHistory
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    forecast: ForecastView | None = None
    forecast_origin: float | None = None
    decision: Decision | None = None
    # The replicas allowed, as last observed: the policy's bounds within the target's own.
    bounds: tuple[int, int] | None = None
    # The count last recommended and not applied (forecastOnly): a recommendation counts once in /metrics.
    recommended: int | None = None
    # Reading the history before the loop's first sample from Prometheus: what it gave, and when
    # to try (again; None: done, or in progress).
    backfill: str | None = None
    backfill_at: float | None = 0.0
    actuals: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=ACTUALS_KEPT))
    # The recent forecasts, oldest first: the dashboard shows each one's next step against the demand that came.
    forecasts: deque[ForecastView] = field(default_factory=lambda: deque(maxlen=FORECASTS_KEPT))


@dataclass
class ModelStatus:
    context: int = 288
    horizon: int = 12
    error: str | None = None
    version: str | None = None
    limits_known: bool = False


def policy_config(settings: AutoscalerSettings) -> PolicyConfig:
    scaling = settings.scaling
    return PolicyConfig(
        cpu_scale_up=scaling.cpu_thresholds.scale_up,
        cpu_scale_down=scaling.cpu_thresholds.scale_down,
        memory_scale_up=scaling.memory_thresholds.scale_up,
        memory_scale_down=scaling.memory_thresholds.scale_down,
        tolerance=scaling.tolerance,
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        prediction_weight=scaling.prediction_weight,
        quantile=scaling.quantile,
        interval_s=scaling.interval.total_seconds(),
        stabilization_s=scaling.stabilization_window.total_seconds(),
        max_interval_ratio=scaling.max_interval_ratio,
    )


class Autoscaler:
    def __init__(
        self,
        settings: AutoscalerSettings,
        target: Target,
        models: ModelClient,
        store: DecisionStore,
        metrics: PrometheusSource | None = None,
    ) -> None:
        self.settings = settings
        self.target = target
        self.models = models
        self.store = store
        self.model = ModelStatus()
        self.config = policy_config(settings)
        self.services: dict[str, ServiceState] = {}
        # Changes of the count the loop decided, by (service, outcome): for /metrics.
        self.changes: Counter[tuple[str, str]] = Counter()
        self.last_tick_at: float | None = None
        self.metrics = metrics
        self._observer = Observer(target, metrics)
        self._actions: set[asyncio.Task[None]] = set()
        self._measures: set[asyncio.Task[None]] = set()

    @property
    def acting(self) -> bool:
        return self.settings.scaling.mode == "forecastAndScale"

    async def run(self) -> None:
        """Tick every interval until cancelled; a failing tick is logged and the loop goes on."""
        interval_s = self.config.interval_s
        while True:
            started = time.monotonic()
            try:
                await self.tick()
            except Exception:
                log.exception("autoscaler tick failed")
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))

    async def close(self) -> None:
        """Let the changes in progress finish; stop measuring start-up times."""
        await self.close_when_idle()
        for task in list(self._measures):
            task.cancel()
        await asyncio.gather(*self._measures, return_exceptions=True)

    async def close_when_idle(self) -> None:
        """Wait until no change decided by the loop is in progress."""
        await asyncio.gather(*self._actions, return_exceptions=True)

    async def refresh_model_limits(self) -> None:
        """The forecaster's context and horizon, as the model server reports them."""
        try:
            info = await self.models.model_info()
        except TmsopsError as error:
            self.model.error = error.message
            return
        limits = info.get("forecast") or {}
        self.model.context = int(limits.get("context", self.model.context))
        self.model.horizon = int(limits.get("horizon", self.model.horizon))
        self.model.limits_known = True

    async def tick(self) -> list[Decision]:
        """One decision cycle (one span when tracing): observe, forecast, decide, record, act."""
        with span("autoscaler.cycle", {"tmsops.scaling.mode": self.settings.scaling.mode}) as cycle:
            if not self.model.limits_known:
                await self.refresh_model_limits()
            names = await self.managed_services()
            observed = await asyncio.gather(*(self._observe(name) for name in names))
            present = {name: observation for name, observation in zip(names, observed, strict=True) if observation}
            await self._refresh_forecasts(present)
            decisions = [self._decide(name, observation) for name, observation in present.items()]
            cycle.set_attribute("tmsops.services", len(present))
            cycle.set_attribute("tmsops.changes", sum(d.desired != d.current for d in decisions))
            self.last_tick_at = time.monotonic()
            return decisions

    async def managed_services(self) -> list[str]:
        configured = self.settings.scaling.services
        return list(configured) if configured else [service.name for service in await self.target.list_services()]

    def state(self, name: str) -> ServiceState:
        state = self.services.get(name)
        if state is None:
            policy = ServicePolicy(name, self.config, startup_s=self.settings.scaling.startup_time.total_seconds())
            history = DemandHistory(self.settings.scaling.forecast_step.total_seconds())
            state = self.services[name] = ServiceState(policy, history)
        return state

    async def scale(self, service: str, action: str, replicas: int | None, reason: str) -> dict[str, Any]:
        """``POST /scale``: after any scale of the service in progress, set the count or change the then-current one."""
        state = self.state(service)
        async with state.lock:
            status = await self.target.service(service)
            desired = target_count(action, replicas, status.replicas)
            started = time.monotonic()
            changed = await self.target.set_replicas(service, desired)
        if desired > status.replicas:
            self._background(self._measure_startup(state, service, desired, started))
        record = {
            "service": service,
            "source": "api",
            "mode": self.settings.scaling.mode,
            "current": status.replicas,
            "desired": desired,
            "applied": True,
            "reason": reason,
            "inputs": {"action": action, "replicas": replicas},
        }
        self.store.add(**record)
        return {"previous": status.replicas, "replicas": desired, "status": changed}

    async def _observe(self, name: str) -> Observation | None:
        try:
            observation, _ = await self._observer.observe(name)
        except TmsopsError as error:
            log.warning("cannot observe %s: %s", name, error.message)
            return None
        state = self.state(name)
        state.bounds = replica_bounds(self.config, observation)
        if observation.demand is not None:
            demand_at = observation.demand_at if observation.demand_at is not None else observation.at
            state.history.add(demand_at, observation.demand)
            if state.backfill_at is not None and time.monotonic() >= state.backfill_at:
                self._backfill(name, state)
        state.actuals.append(
            {
                "at": time.time(),
                "demand": observation.demand,
                "replicas": observation.replicas,
                "cpu": observation.cpu_utilization,
            }
        )
        return observation

    def _backfill(self, name: str, state: ServiceState) -> None:
        """The history before the service's first sample from Prometheus, in the background
        (:mod:`actuators.autoscaler.backfill`), so that forecasts start at once. Once the model's
        context is known; tried again a minute later while Prometheus cannot be reached."""
        if self.metrics is None:
            state.backfill, state.backfill_at = "no Prometheus configured", None
            return
        if not self.model.limits_known:
            return  # the context to fill is the model's: known once the model server answers
        state.backfill_at = None
        self._background(self._read_history(self.metrics, name, state))

    async def _read_history(self, source: PrometheusSource, name: str, state: ServiceState) -> None:
        first = state.history.first_step_start
        needed = self.model.context - len(state.history.points)
        if first is None or needed < 2:
            state.backfill = "not needed"
            return
        first_step_start = datetime.fromtimestamp(first + time.time() - time.monotonic(), UTC)
        try:
            values = await demand_before(source, name, first_step_start, state.history.step_s, needed)
        except TemporaryError as error:
            first_try = state.backfill is None
            retry = f"trying again in {BACKFILL_RETRY_S:.0f} s"
            state.backfill = f"no history from Prometheus: {error.message}; {retry}"
            state.backfill_at = time.monotonic() + BACKFILL_RETRY_S
            log.log(logging.WARNING if first_try else logging.INFO, "%s: %s", name, state.backfill)
            return
        except Exception as error:  # a refused query, a bad template: trying again would not help
            message = error.message if isinstance(error, TmsopsError) else repr(error)
            state.backfill = f"no history from Prometheus: {message}"
            log.warning("%s: %s; forecasts start after %d steps of live history", name, state.backfill, needed)
            return
        state.history.backfill(values)
        state.backfill = f"{len(values)} steps of history from Prometheus"
        log.info("%s: %s", name, state.backfill)

    async def _refresh_forecasts(self, present: dict[str, Observation]) -> None:
        """One batched forecast for every service whose history gained a step since its last forecast."""
        due = {}
        for name in present:
            state = self.state(name)
            values = state.history.last(self.model.context)
            if values is not None and state.history.step_end != state.forecast_origin:
                due[name] = values
        if not due:
            return
        series = [SeriesIn(id=name, values=values) for name, values in due.items()]
        try:
            forecasts = await self.models.forecast(series)
        except TmsopsError as error:
            self.model.error = error.message
            for name in due:
                self.state(name).forecast = None
            if isinstance(error, ModelRequestError):
                self.model.limits_known = False
            return
        self.model.error = None
        for forecast in forecasts:
            state = self.state(forecast.id)
            origin = state.history.step_end or time.monotonic()
            self.model.version = forecast.version
            state.forecast_origin = state.history.step_end
            state.forecast = ForecastView(
                at=origin,
                step_s=state.history.step_s,
                p10=tuple(forecast.p10),
                p50=tuple(forecast.p50),
                p90=tuple(forecast.p90),
                point_in_step=0.5,  # the history holds each step's mean demand
            )
            state.forecasts.append(state.forecast)

    def _decide(self, name: str, observation: Observation) -> Decision:
        state = self.state(name)
        error = self.forecast_problem(state)
        forecast = state.forecast if error is None else None
        decision = state.policy.decide(observation, forecast, error, now=time.monotonic())
        state.decision = decision
        busy = state.lock.locked()
        act = self.acting and decision.desired != decision.current and not busy
        record = self._record(decision, applied=False, busy=busy and decision.desired != decision.current)
        if act:
            task = asyncio.create_task(self._apply(state, decision, record))
            self._actions.add(task)
            task.add_done_callback(self._actions.discard)
        else:
            self.store.add(**record)
            recommends = decision.desired if decision.desired != decision.current and not busy else None
            if recommends is not None and recommends != state.recommended:
                self.changes[(name, "recommended")] += 1
            state.recommended = recommends
        return decision

    def forecast_problem(self, state: ServiceState) -> str | None:
        if self.model.error is not None:
            return f"model server: {self.model.error}"
        if state.forecast is None:
            needed = self.model.context - len(state.history.points)
            if needed <= 0:
                return "no forecast yet"
            return f"{needed} more steps of demand history needed" + (f" ({state.backfill})" if state.backfill else "")
        return None

    def _record(self, decision: Decision, *, applied: bool, busy: bool) -> dict[str, Any]:
        reason = decision.reason + ("; not applied: a scale of this service is in progress" if busy else "")
        if not self.acting and decision.desired != decision.current:
            reason += "; forecastOnly: recommended, not applied"
        state = self.services[decision.service]
        forecast = state.forecast
        return {
            "at": datetime.now(UTC),
            "service": decision.service,
            "source": "loop",
            "mode": self.settings.scaling.mode,
            "current": decision.current,
            "desired": decision.desired,
            "reactive": decision.reactive,
            "predictive": decision.predictive,
            "applied": applied,
            "fallback": decision.fallback,
            "reason": reason,
            "inputs": {
                "actual": state.actuals[-1] if state.actuals else None,
                "forecast_peak": decision.forecast_peak,
                "capacity_per_replica": decision.capacity,
                "lead_time_s": decision.lead_time_s,
                "forecast_p50": list(forecast.p50) if forecast else None,
                "forecast_p10": list(forecast.p10) if forecast else None,
                "forecast_p90": list(forecast.p90) if forecast else None,
            },
        }

    async def _apply(self, state: ServiceState, decision: Decision, record: dict[str, Any]) -> None:
        async with state.lock:
            started = time.monotonic()
            try:
                await self.target.set_replicas(decision.service, decision.desired)
            except TmsopsError as error:
                self.store.add(**{**record, "error": error.message})
                self.changes[(decision.service, "failed")] += 1
                log.warning("scaling %s to %d failed: %s", decision.service, decision.desired, error.message)
                return
            self.store.add(**{**record, "applied": True})
            self.changes[(decision.service, "applied")] += 1
        if decision.desired > decision.current:
            self._background(self._measure_startup(state, decision.service, decision.desired, started))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._measures.add(task)
        task.add_done_callback(self._measures.discard)

    async def _measure_startup(self, state: ServiceState, service: str, replicas: int, started: float) -> None:
        deadline = started + READY_WAIT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(TmsopsError):
                if (await self.target.service(service)).ready_replicas >= replicas:
                    state.policy.record_startup(time.monotonic() - started)
                    return
            await asyncio.sleep(0.5)


def target_count(action: str, replicas: int | None, current: int) -> int:
    """``set`` to ``replicas``; ``scale_up`` / ``scale_down`` by ``replicas`` (default 1) from ``current``."""
    step = replicas if replicas is not None else 1
    if action == "set":
        return step
    return current + step if action == "scale_up" else current - step
