"""The scaling decision for one service at one moment: the code the live loop and the backtest share.

Three answers are computed and combined:

- **reactive**, the Kubernetes HPA rule: ``ceil(replicas x utilisation / target)`` for CPU and
  for memory, the target being the ``scaleUp`` threshold. It scales up when utilisation is over
  ``scaleUp`` by more than the tolerance (0.1), and down only when it is under ``scaleDown``, so
  the two thresholds make a band where nothing moves. The largest answer wins; a missing
  metric never votes for fewer replicas.
- **predictive**: enough replicas, ready at the end of the lead time (the replicas' measured
  start-up time plus one interval, from when the decision is taken: what is decided now is
  ready then; the first forecast value dated at or after it counts too, a step's mean being
  dated at the step's middle), for two demands over that time, each at least the demand
  served now (a replica removed now is gone at once):

  * the *central* demand, the peak of the forecast p50 (or p90 when configured), served at the
    CPU target (``scaleUp``, 70%);
  * the *upper bound*, the peak of ``p50 + bandScale x (p90 - p50)``, served at the
    utilisation where the HPA rule itself starts to scale up (``scaleUp x (1 + tolerance)``,
    77%). A narrow band lets the service run close to the target; a wide one buys headroom
    where the forecast is unsure. ``bandScale`` (2) widens the model's band: its p90 covers
    only 83..87% of the demand that follows, and a replica short costs more (SLO minutes, a
    backlog to drain) than a replica too many.

  The demand one replica serves at the target is learned from history. A p10..p90 band wider
  than ``max_interval_ratio`` times the p50 (or times one replica's demand, when the p50 is
  lower) on the steps used means the forecast says too little and is not used.
- **decision**: the predictive answer in full when it asks for more than both the current and
  the reactive counts (acting early is what the forecast is for); otherwise
  ``ceil(w x predictive + (1 - w) x reactive)`` with ``w = predictionWeight`` (1: follow the
  forecast down, which the HPA's band would not do), never below the reactive answer while it
  asks for more replicas; ``w = 0`` leaves the forecast out entirely (the HPA rule alone).
  Then the scale-down stabilisation window (the highest answer of the window wins, as in the
  HPA), the rate policies per decision (up: +100% or +4 replicas, whichever is more; down:
  -100%, the HPA's defaults), and ``minReplicas .. maxReplicas``.

Without a usable forecast (model server down, an interval too wide, capacity not learned
yet) the decision is the reactive one and says why (``fallback``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

Quantile = Literal["p50", "p90"]


@dataclass(frozen=True)
class PolicyConfig:
    cpu_scale_up: float = 70.0
    cpu_scale_down: float = 30.0
    memory_scale_up: float = 80.0
    memory_scale_down: float = 40.0
    tolerance: float = 0.1
    min_replicas: int = 1
    max_replicas: int = 10
    prediction_weight: float = 1.0
    quantile: Quantile = "p50"
    interval_s: float = 15.0
    stabilization_s: float = 300.0
    max_interval_ratio: float = 2.0
    band_scale: float = 2.0
    scale_up_percent: float = 100.0
    scale_up_pods: int = 4
    scale_down_percent: float = 100.0


@dataclass(frozen=True)
class Observation:
    """What is known about the service now; utilisation in percent of the replicas' requests.

    ``demand`` is a rate measured over a window that ends now; ``demand_at`` is the middle of
    that window, the time the rate describes (``at`` when not given). ``min_replicas`` and
    ``max_replicas`` are the target's own bounds for the service, which win over the policy's.
    """

    at: float
    replicas: int
    cpu_utilization: float | None = None
    memory_utilization: float | None = None
    demand: float | None = None
    demand_at: float | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None


@dataclass(frozen=True)
class ForecastView:
    """Forecast demand for the next steps, ``step_s`` seconds apart: step ``k`` (from 1) spans
    ``at + (k - 1) x step_s .. at + k x step_s``.

    ``point_in_step`` says when in its step a value is the demand: 1 (its end) for a trace of
    samples, 0.5 (its middle) for the mean demand of each step, as the live loop's history holds.
    """

    at: float
    step_s: float
    p10: tuple[float, ...]
    p50: tuple[float, ...]
    p90: tuple[float, ...]
    point_in_step: float = 1.0

    def value_time(self, step: int) -> float:
        """When step ``step``'s value (from 1) is the demand."""
        return self.at + (step - 1 + self.point_in_step) * self.step_s


@dataclass(frozen=True)
class Decision:
    service: str
    at: float
    current: int
    desired: int
    reactive: int
    predictive: int | None
    blended: int
    fallback: str | None
    reason: str
    forecast_peak: float | None = None
    capacity: float | None = None
    lead_time_s: float | None = None
    forecast_upper: float | None = None

    @property
    def action(self) -> Literal["scale_up", "scale_down", "none"]:
        if self.desired > self.current:
            return "scale_up"
        return "scale_down" if self.desired < self.current else "none"


def reactive_desire(observation: Observation, config: PolicyConfig) -> tuple[int, str]:
    """The HPA answer over CPU and memory, and which metric decided it."""
    answers = [
        _metric_desire(
            "cpu", observation.cpu_utilization, config.cpu_scale_up, config.cpu_scale_down, observation, config
        ),
        _metric_desire(
            "memory",
            observation.memory_utilization,
            config.memory_scale_up,
            config.memory_scale_down,
            observation,
            config,
        ),
    ]
    present = [answer for answer in answers if answer is not None]
    if not present:
        return observation.replicas, "no utilisation metric: keep the current count"
    return max(present, key=lambda answer: answer[0])


def _metric_desire(
    name: str, utilization: float | None, up: float, down: float, observation: Observation, config: PolicyConfig
) -> tuple[int, str] | None:
    if utilization is None or math.isnan(utilization):
        return None
    replicas = max(observation.replicas, 1)
    ratio = utilization / up
    if ratio > 1 + config.tolerance:
        return math.ceil(replicas * ratio), f"{name} {utilization:.0f}% over {up:.0f}%"
    if utilization < down and ratio < 1 - config.tolerance:
        return math.ceil(replicas * ratio), f"{name} {utilization:.0f}% under {down:.0f}%"
    return observation.replicas, f"{name} {utilization:.0f}% within {down:.0f}..{up:.0f}%"


def steps_used(forecast: ForecastView, now: float, lead_time_s: float) -> int:
    """How many forecast steps reach the lead time: every value before it, and the first at or after it.

    The demand when replicas asked for now are ready lies between two values; both count.
    """
    horizon_end = now + lead_time_s
    for step in range(1, len(forecast.p50) + 1):
        if forecast.value_time(step) >= horizon_end:
            return step
    return len(forecast.p50)


def forecast_peak(forecast: ForecastView, now: float, lead_time_s: float, quantile: Quantile) -> float:
    """The highest forecast demand over the steps that reach the lead time."""
    values = forecast.p90 if quantile == "p90" else forecast.p50
    return max(values[: steps_used(forecast, now, lead_time_s)])


def forecast_upper(forecast: ForecastView, now: float, lead_time_s: float, band_scale: float) -> float:
    """The highest ``p50 + band_scale x (p90 - p50)`` over the steps that reach the lead time."""
    steps = steps_used(forecast, now, lead_time_s)
    bands = zip(forecast.p50[:steps], forecast.p90[:steps], strict=True)
    return max(mid + band_scale * (high - mid) for mid, high in bands)


def interval_too_wide(
    forecast: ForecastView, config: PolicyConfig, steps: int | None = None, floor: float = 0.0
) -> bool:
    """True when the p10..p90 band is wider than ``max_interval_ratio`` times the p50 (or ``floor``,
    when more) at a step used. The floor keeps a forecast of almost no demand from always being too wide."""
    bands = zip(forecast.p10, forecast.p50, forecast.p90, strict=True)
    return any(high - low > config.max_interval_ratio * max(mid, floor, 1e-9) for low, mid, high in list(bands)[:steps])


def replica_bounds(config: PolicyConfig, observation: Observation) -> tuple[int, int]:
    """The replicas allowed: the policy's ``minReplicas .. maxReplicas``, then the target's own
    bounds where it has them (a Deployment's or a fleet service's), which the target enforces."""
    low = observation.min_replicas if observation.min_replicas is not None else 0
    high = observation.max_replicas if observation.max_replicas is not None else max(config.max_replicas, low)
    return min(max(config.min_replicas, low), high), min(max(config.max_replicas, low), high)


@dataclass(frozen=True)
class Sizing:
    """The predictive answer and what drove it, or why there is none (``fallback``)."""

    replicas: int | None = None
    peak: float | None = None
    upper: float | None = None
    for_peak: int | None = None
    for_upper: int | None = None
    edge_utilization: float | None = None
    fallback: str | None = None
    peak_source: str = "forecast peak"


@dataclass
class CapacityModel:
    """Demand one replica serves at the CPU target, learned from observations (a running median)."""

    target_utilization: float = 70.0
    min_utilization: float = 5.0
    window: int = 240
    estimates: deque[float] = field(default_factory=lambda: deque(maxlen=240))

    def observe(self, observation: Observation) -> None:
        usage = observation.cpu_utilization
        if not observation.demand or usage is None or usage < self.min_utilization or observation.replicas < 1:
            return
        self.estimates.append(observation.demand / observation.replicas * self.target_utilization / usage)

    @property
    def per_replica(self) -> float | None:
        if len(self.estimates) < 3:
            return None
        ordered = sorted(self.estimates)
        return ordered[len(ordered) // 2]


@dataclass
class ServicePolicy:
    """The decision state of one service: learned capacity, start-up time, recent answers."""

    name: str
    config: PolicyConfig
    capacity: CapacityModel = field(default_factory=CapacityModel)
    startup_s: float = 30.0
    recent: deque[tuple[float, int]] = field(default_factory=deque)
    last_change_at: float | None = None

    def __post_init__(self) -> None:
        self.capacity.target_utilization = self.config.cpu_scale_up

    def record_startup(self, seconds: float) -> None:
        """A measured start-up time (request to ready); a moving average of them sets the lead time."""
        self.startup_s = 0.7 * self.startup_s + 0.3 * seconds

    def decide(
        self,
        observation: Observation,
        forecast: ForecastView | None,
        forecast_error: str | None = None,
        now: float | None = None,
    ) -> Decision:
        """``now``: when the decision is taken, if later than the observation (after a forecast came
        back); the lead time counts from it."""
        self.capacity.observe(observation)
        reactive, why = reactive_desire(observation, self.config)
        lead_time_s = self.startup_s + self.config.interval_s
        decided_at = observation.at if now is None else max(now, observation.at)
        sizing = self._predictive(observation, forecast, forecast_error, decided_at, lead_time_s)
        predictive, fallback = sizing.replicas, sizing.fallback
        blended = self._blend(observation.replicas, reactive, predictive)
        desired = self._bounded(observation, blended)
        reason = self._reason(why, sizing, blended, desired)
        return Decision(
            service=self.name,
            at=observation.at,
            current=observation.replicas,
            desired=desired,
            reactive=reactive,
            predictive=predictive,
            blended=blended,
            fallback=fallback,
            reason=reason,
            forecast_peak=sizing.peak,
            capacity=self.capacity.per_replica,
            lead_time_s=lead_time_s,
            forecast_upper=sizing.upper,
        )

    def _predictive(
        self,
        observation: Observation,
        forecast: ForecastView | None,
        error: str | None,
        now: float,
        lead_time_s: float,
    ) -> Sizing:
        """Replicas for the central demand at the target and for its upper bound at the tolerance edge."""
        config = self.config
        if forecast is None:
            return Sizing(fallback=error or "no forecast")
        per_replica = self.capacity.per_replica
        if per_replica is None or per_replica <= 0:
            return Sizing(fallback="capacity per replica not learned yet")
        if interval_too_wide(forecast, config, steps_used(forecast, now, lead_time_s), floor=per_replica):
            return Sizing(fallback="forecast interval too wide")
        served = observation.demand if observation.demand is not None and observation.demand > 0 else 0.0
        forecast_central = forecast_peak(forecast, now, lead_time_s, config.quantile)
        peak = max(forecast_central, served)
        upper = max(forecast_upper(forecast, now, lead_time_s, config.band_scale), served)
        edge = 1 + config.tolerance
        for_peak = max(1, math.ceil(peak / per_replica - 1e-9))
        for_upper = max(1, math.ceil(upper / (per_replica * edge) - 1e-9))
        return Sizing(
            replicas=max(for_peak, for_upper),
            peak=peak,
            upper=upper,
            for_peak=for_peak,
            for_upper=for_upper,
            edge_utilization=config.cpu_scale_up * edge,
            peak_source="demand served now" if served > forecast_central else "forecast peak",
        )

    def _blend(self, current: int, reactive: int, predictive: int | None) -> int:
        """A forecast that asks for more than both counts is taken in full (scaling up early is its point);
        otherwise the weighted blend, never below a reactive scale-up."""
        weight = self.config.prediction_weight
        if predictive is None or weight <= 0:
            return reactive
        if predictive > max(current, reactive):
            return predictive
        blended = math.ceil(weight * predictive + (1 - weight) * reactive - 1e-9)
        return max(blended, reactive) if reactive > current else blended

    def _bounded(self, observation: Observation, blended: int) -> int:
        now, current, config = observation.at, observation.replicas, self.config
        self.recent.append((now, blended))
        while self.recent and self.recent[0][0] < now - config.stabilization_s:
            self.recent.popleft()
        desired = blended if blended >= current else min(current, max(value for _, value in self.recent))
        up_limit = max(math.floor(current * (1 + config.scale_up_percent / 100)), current + config.scale_up_pods)
        down_limit = math.ceil(current * (1 - config.scale_down_percent / 100))
        desired = min(max(desired, down_limit), up_limit)
        low, high = replica_bounds(config, observation)
        return min(max(desired, low), high)

    def _reason(self, why: str, sizing: Sizing, blended: int, desired: int) -> str:
        parts = [f"reactive: {why}"]
        if sizing.replicas is not None and sizing.peak is not None and sizing.upper is not None:
            parts.append(
                f"{sizing.peak_source} {sizing.peak:.1f}/s needs {sizing.for_peak} at {self.config.cpu_scale_up:.0f}%, "
                f"its upper bound {sizing.upper:.1f}/s needs {sizing.for_upper} at {sizing.edge_utilization:.0f}%"
            )
            if self.config.prediction_weight <= 0:
                parts.append("predictionWeight 0: the forecast is left out")
        if sizing.fallback:
            parts.append(f"reactive only ({sizing.fallback})")
        if desired != blended:
            parts.append(f"bounded to {desired} (stabilisation, rate or min/max)")
        return "; ".join(parts)
