"""Deterministic generator of per-service metric traces with labelled incidents.

This is the pipeline's default training data when no real metrics are configured.
For every service it produces four series (requests, CPU, memory, p95 latency)
that are coupled the way a real service couples them: CPU follows load through
a saturating curve, latency follows CPU through a queueing curve, memory grows
between garbage collections. Incidents are injected after the probation period
and labelled with NAB-style anomaly windows; short traffic bursts are normal
load and are not labelled.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from training.series import Series, Window

METRICS = ("requests_per_s", "cpu_percent", "memory_bytes", "latency_p95_ms")
INCIDENT_KINDS = ("latency_regression", "memory_leak", "cpu_runaway", "traffic_drop")

# Which series of the service an incident visibly changes (and so labels).
AFFECTED_METRICS: dict[str, tuple[str, ...]] = {
    "latency_regression": ("latency_p95_ms",),
    "memory_leak": ("memory_bytes",),
    "cpu_runaway": ("cpu_percent", "latency_p95_ms"),
    "traffic_drop": ("requests_per_s", "cpu_percent"),
}

# How long each kind of incident lasts before rollback / restart / recovery, in hours.
_DURATION_HOURS: dict[str, tuple[float, float]] = {
    "latency_regression": (2.0, 8.0),
    "memory_leak": (6.0, 16.0),
    "cpu_runaway": (1.0, 4.0),
    "traffic_drop": (0.35, 1.5),
}

PROBATION_FRACTION = 0.15  # NAB: the first 15% of a series is not scored
WINDOW_FRACTION = 0.10  # NAB: windows cover ~10% of a series in total

_STREAMS = {
    "profile": 0,
    "incidents": 1,
    **{metric: 2 + i for i, metric in enumerate(METRICS)},
}
_SECONDS_PER_DAY = 86_400
_MAX_UTILISATION = 0.97  # keeps the queueing curve finite


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate; the same config always produces the same traces."""

    seed: int = 42
    services: tuple[str, ...] = ("gateway", "orders", "inventory", "payments")
    days: int = 14
    step_s: int = 300
    start: str = "2026-01-05T00:00:00"  # a Monday
    incidents_per_service: int = 2


@dataclass(frozen=True)
class Incident:
    """One injected incident of a service, in steps of that service's series."""

    kind: str
    onset: int  # index of the first affected point
    duration: int  # number of affected points
    severity: float  # in [0, 1]: how bad it is within the kind's range

    @property
    def end(self) -> int:
        """Index just after the last affected point."""
        return self.onset + self.duration

    @property
    def metrics(self) -> tuple[str, ...]:
        return AFFECTED_METRICS[self.kind]


@dataclass(frozen=True)
class _Clock:
    """The shared time axis and the calendar features derived from it."""

    timestamps: np.ndarray  # datetime64[ns]
    hour: np.ndarray  # fractional hour of day
    weekday: np.ndarray  # 0 = Monday ... 6 = Sunday
    steps_per_hour: float

    @property
    def n(self) -> int:
        return int(self.timestamps.shape[0])


@dataclass(frozen=True)
class _ServiceProfile:
    """Per-service constants: levels, daily shape, noise and resource curves."""

    base_rps: float
    morning_hour: float
    lunch_weight: float
    evening_weight: float
    night_floor: float
    saturday_factor: float
    growth: float  # fractional change of load over the whole series
    noise_sigma: float
    noise_phi: float
    cpu_idle: float
    cpu_scale_rps: float  # load at which the saturating CPU curve reaches 63%
    memory_base: float
    memory_gc_growth: float  # bytes per hour between collections
    memory_load_bytes: float  # extra resident bytes at the mean load
    latency_base_ms: float


def generate_traces(config: GeneratorConfig) -> list[Series]:
    """Four series per service (requests, CPU, memory, p95 latency), in service order."""
    _check_config(config)
    clock = _make_clock(config)
    traces: list[Series] = []
    for service in config.services:
        traces.extend(_service_traces(config, service, clock))
    return traces


def plan_incidents(config: GeneratorConfig, service: str) -> tuple[Incident, ...]:
    """The incidents injected into ``service``, in time order, non-overlapping."""
    _check_config(config)
    n = _series_length(config)
    count = config.incidents_per_service
    if count == 0:
        return ()
    rng = _rng(config.seed, service, "incidents")
    kinds = np.resize(rng.permutation(len(INCIDENT_KINDS)), count)
    onsets = _incident_onsets(rng, n, count)
    reach = _max_half_window(n)
    steps_per_hour = 3600.0 / config.step_s
    return tuple(
        _draw_incident(
            rng, INCIDENT_KINDS[int(kind)], int(onset), steps_per_hour, reach
        )
        for kind, onset in zip(kinds, onsets, strict=True)
    )


def probation_length(n: int) -> int:
    """Number of leading points of a series that no anomaly window may touch."""
    return math.ceil(PROBATION_FRACTION * n)


# --- configuration and time axis -------------------------------------------------


def _check_config(config: GeneratorConfig) -> None:
    if config.days <= 0 or config.step_s <= 0:
        raise ValueError("days and step_s must be positive")
    if not config.services or len(set(config.services)) != len(config.services):
        raise ValueError("services must be a non-empty tuple of distinct names")
    if config.incidents_per_service < 0:
        raise ValueError("incidents_per_service must not be negative")
    n = _series_length(config)
    if n < 2:
        raise ValueError("days and step_s leave fewer than two points per series")
    if (
        config.incidents_per_service
        and _incident_slot_length(n, config.incidents_per_service) < 0
    ):
        raise ValueError(
            f"{config.incidents_per_service} incidents per service do not fit in {n} points "
            "without overlapping; use more days, a smaller step or fewer incidents"
        )


def _series_length(config: GeneratorConfig) -> int:
    return config.days * _SECONDS_PER_DAY // config.step_s


def _make_clock(config: GeneratorConfig) -> _Clock:
    n = _series_length(config)
    start = np.datetime64(config.start, "ns")
    offsets = (np.arange(n, dtype=np.int64) * config.step_s * 1_000_000_000).astype(
        "timedelta64[ns]"
    )
    timestamps = start + offsets
    days = timestamps.astype("datetime64[D]")
    seconds_into_day = (timestamps - days).astype("timedelta64[s]").astype(np.float64)
    weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    return _Clock(
        timestamps, seconds_into_day / 3600.0, weekday, 3600.0 / config.step_s
    )


def _rng(seed: int, service: str, stream: str) -> np.random.Generator:
    """An independent generator per (seed, service, stream): adding a service changes no other."""
    return np.random.default_rng([seed, zlib.crc32(service.encode()), _STREAMS[stream]])


# --- one service -----------------------------------------------------------------


def _service_traces(
    config: GeneratorConfig, service: str, clock: _Clock
) -> list[Series]:
    profile = _draw_profile(_rng(config.seed, service, "profile"))
    incidents = plan_incidents(config, service)
    values = _service_values(config.seed, service, clock, profile, incidents)
    windows = _windows_by_metric(incidents, clock.timestamps)
    source = f"generator(seed={config.seed})"
    return [
        Series(
            key=f"{service}/{metric}",
            timestamps=clock.timestamps.copy(),
            values=values[metric],
            metric=metric,
            source=source,
            windows=windows[metric],
        )
        for metric in METRICS
    ]


def _draw_profile(rng: np.random.Generator) -> _ServiceProfile:
    base_rps = float(np.exp(rng.uniform(np.log(15.0), np.log(600.0))))
    cpu_idle = rng.uniform(2.0, 8.0)
    cpu_at_mean = rng.uniform(28.0, 45.0)
    fraction_at_mean = (cpu_at_mean - cpu_idle) / (100.0 - cpu_idle)
    memory_base = float(np.exp(rng.uniform(np.log(256e6), np.log(2e9))))
    return _ServiceProfile(
        base_rps=base_rps,
        morning_hour=rng.uniform(6.5, 8.0),
        lunch_weight=rng.uniform(0.15, 0.4),
        evening_weight=rng.uniform(0.2, 0.5),
        night_floor=rng.uniform(0.12, 0.3),
        saturday_factor=rng.uniform(0.6, 0.8),
        growth=rng.uniform(-0.05, 0.2),
        noise_sigma=rng.uniform(0.04, 0.09),
        noise_phi=rng.uniform(0.6, 0.9),
        cpu_idle=cpu_idle,
        cpu_scale_rps=base_rps / -np.log1p(-fraction_at_mean),
        memory_base=memory_base,
        memory_gc_growth=memory_base * rng.uniform(0.01, 0.03),
        memory_load_bytes=memory_base * rng.uniform(0.05, 0.15),
        latency_base_ms=rng.uniform(15.0, 90.0),
    )


def _service_values(
    seed: int,
    service: str,
    clock: _Clock,
    profile: _ServiceProfile,
    incidents: tuple[Incident, ...],
) -> dict[str, np.ndarray]:
    requests = _requests(
        _rng(seed, service, "requests_per_s"), clock, profile, incidents
    )
    cpu = _cpu(_rng(seed, service, "cpu_percent"), requests, profile, incidents)
    memory = _memory(
        _rng(seed, service, "memory_bytes"), clock, requests, profile, incidents
    )
    latency = _latency(_rng(seed, service, "latency_p95_ms"), cpu, profile, incidents)
    return {
        "requests_per_s": requests,
        "cpu_percent": cpu,
        "memory_bytes": memory,
        "latency_p95_ms": latency,
    }


# --- requests ----------------------------------------------------------------------


def _requests(
    rng: np.random.Generator,
    clock: _Clock,
    profile: _ServiceProfile,
    incidents: tuple[Incident, ...],
) -> np.ndarray:
    daily = _daily_profile(clock.hour, profile)
    weekly = _weekly_factor(clock.weekday, profile)
    trend = 1.0 + profile.growth * np.linspace(0.0, 1.0, clock.n)
    # Relative noise is larger when traffic is low (fewer requests per interval).
    noise_scale = (daily * weekly) ** -0.4
    log_noise = _ar1(rng, clock.n, profile.noise_phi, profile.noise_sigma) * noise_scale
    bursts = _traffic_bursts(rng, clock.n, clock.steps_per_hour)
    requests = profile.base_rps * daily * weekly * trend * np.exp(log_noise) * bursts
    for incident in incidents:
        if incident.kind == "traffic_drop":
            requests[incident.onset : incident.end] *= 0.25 - 0.22 * incident.severity
    return requests


def _daily_profile(hour: np.ndarray, profile: _ServiceProfile) -> np.ndarray:
    """Low at night, a morning ramp, a lunch peak and an evening peak; mean 1 over a day."""

    def shape(h: np.ndarray) -> np.ndarray:
        daytime = _logistic((h - profile.morning_hour) / 0.7) * _logistic(
            (23.0 - h) / 0.9
        )
        lunch = _circular_bump(h, 12.5, 1.0)
        evening = _circular_bump(h, 20.0, 1.6)
        return (
            profile.night_floor
            + 0.6 * daytime
            + profile.lunch_weight * lunch
            + profile.evening_weight * evening
        )

    mean_over_day = float(shape(np.linspace(0.0, 24.0, 1440, endpoint=False)).mean())
    return shape(hour) / mean_over_day


def _weekly_factor(weekday: np.ndarray, profile: _ServiceProfile) -> np.ndarray:
    factors = np.array(
        [
            1.0,
            1.02,
            1.03,
            1.02,
            0.97,
            profile.saturday_factor,
            0.92 * profile.saturday_factor,
        ]
    )
    return factors[weekday]


def _traffic_bursts(
    rng: np.random.Generator, n: int, steps_per_hour: float
) -> np.ndarray:
    """Load multiplier with short bursts of normal extra traffic (~one a day, 2-6 steps)."""
    max_length = 6
    count = int(rng.poisson(n / (24.0 * steps_per_hour)))
    starts = rng.integers(0, n, size=count)
    lengths = rng.integers(2, max_length + 1, size=count)
    heights = rng.uniform(0.4, 1.5, size=count)
    offsets = np.arange(max_length)
    positions = starts[:, None] + offsets
    amounts = heights[:, None] * 0.75**offsets
    keep = (offsets < lengths[:, None]) & (positions < n)
    multiplier = np.ones(n)
    np.add.at(multiplier, positions[keep], amounts[keep])
    return multiplier


# --- CPU, memory, latency -------------------------------------------------------------


def _cpu(
    rng: np.random.Generator,
    requests: np.ndarray,
    profile: _ServiceProfile,
    incidents: tuple[Incident, ...],
) -> np.ndarray:
    saturation = 1.0 - np.exp(-requests / profile.cpu_scale_rps)
    cpu = profile.cpu_idle + (100.0 - profile.cpu_idle) * saturation
    cpu = (
        cpu
        + _ar1(rng, requests.shape[0], 0.7, 1.5)
        + rng.normal(0.0, 0.8, requests.shape[0])
    )
    for incident in incidents:
        if incident.kind == "cpu_runaway":
            _apply_cpu_runaway(cpu, incident)
    return np.clip(cpu, 0.0, 100.0)


def _apply_cpu_runaway(cpu: np.ndarray, incident: Incident) -> None:
    """A stuck loop: CPU climbs towards a ceiling over the first third, then stays there."""
    ceiling = 90.0 + 8.0 * incident.severity
    climb = np.clip(
        (np.arange(incident.duration) + 1.0) / max(1.0, incident.duration / 3.0),
        0.0,
        1.0,
    )
    span = cpu[incident.onset : incident.end]
    cpu[incident.onset : incident.end] = span + (ceiling - span) * climb


def _memory(
    rng: np.random.Generator,
    clock: _Clock,
    requests: np.ndarray,
    profile: _ServiceProfile,
    incidents: tuple[Incident, ...],
) -> np.ndarray:
    restarts = np.array(
        [i.end for i in incidents if i.kind == "memory_leak"], dtype=np.int64
    )
    steps_since_gc = _steps_since_collection(
        rng, clock.n, clock.steps_per_hour, restarts
    )
    heap = profile.memory_gc_growth * steps_since_gc / clock.steps_per_hour
    load = profile.memory_load_bytes * requests / profile.base_rps
    drift = profile.memory_base * 0.03 * np.linspace(0.0, 1.0, clock.n)
    memory = profile.memory_base + heap + load + drift
    memory = memory * (1.0 + rng.normal(0.0, 0.003, clock.n))
    for incident in incidents:
        if incident.kind == "memory_leak":
            leaked = profile.memory_base * (0.5 + 0.5 * incident.severity)
            memory[incident.onset : incident.end] += (
                leaked * (np.arange(incident.duration) + 1.0) / incident.duration
            )
    return memory


def _steps_since_collection(
    rng: np.random.Generator, n: int, steps_per_hour: float, restarts: np.ndarray
) -> np.ndarray:
    """Sawtooth: steps since the last GC (every 2-8 hours) or process restart."""
    low, high = 2.0 * steps_per_hour, 8.0 * steps_per_hour
    gaps = rng.uniform(low, high, size=int((n + high) / low) + 2)
    first = -rng.uniform(0.0, high)
    collections = np.floor(first + np.concatenate(([0.0], np.cumsum(gaps)))).astype(
        np.int64
    )
    collections = np.union1d(collections, restarts)
    steps = np.arange(n)
    last = collections[np.searchsorted(collections, steps, side="right") - 1]
    return (steps - last).astype(np.float64)


def _latency(
    rng: np.random.Generator,
    cpu: np.ndarray,
    profile: _ServiceProfile,
    incidents: tuple[Incident, ...],
) -> np.ndarray:
    """Queueing curve p95 ~ base / (1 - utilisation), steep near saturation, noisy."""
    utilisation = np.clip(cpu / 100.0, 0.0, _MAX_UTILISATION)
    latency = profile.latency_base_ms / (1.0 - utilisation)
    noise = _ar1(rng, cpu.shape[0], 0.6, 0.08) + rng.normal(0.0, 0.05, cpu.shape[0])
    latency = latency * np.exp(noise)
    for incident in incidents:
        if incident.kind == "latency_regression":
            latency[incident.onset : incident.end] *= 1.8 + 1.2 * incident.severity
    return latency


# --- incidents and windows ------------------------------------------------------------


def _max_half_window(n: int) -> int:
    """Largest half-width of any window (a series with one window): 5% of the series."""
    return int(WINDOW_FRACTION * n) // 2


def _incident_span(n: int) -> tuple[int, int]:
    """First and last allowed onset: every window stays after probation and inside the series."""
    reach = _max_half_window(n)
    return probation_length(n) + reach, n - 1 - reach


def _incident_slot_length(n: int, count: int) -> int:
    """Room left in each of ``count`` equal slots after the minimum spacing between onsets."""
    first, last = _incident_span(n)
    return (last - first + 1) // count - (_max_half_window(n) + 1)


def _incident_onsets(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """One onset per equal slot of the span, spaced so no incidents or windows overlap."""
    first, last = _incident_span(n)
    slot = (last - first + 1) // count
    room = _incident_slot_length(n, count)
    return first + np.arange(count) * slot + rng.integers(0, room + 1, size=count)


def _draw_incident(
    rng: np.random.Generator,
    kind: str,
    onset: int,
    steps_per_hour: float,
    max_duration: int,
) -> Incident:
    low, high = _DURATION_HOURS[kind]
    duration = round(rng.uniform(low, high) * steps_per_hour)
    return Incident(
        kind,
        onset,
        int(np.clip(duration, 1, max(1, max_duration))),
        float(rng.uniform()),
    )


def _windows_by_metric(
    incidents: tuple[Incident, ...], timestamps: np.ndarray
) -> dict[str, tuple[Window, ...]]:
    """NAB-style windows: centred on each onset, width 10% of the series over the window count."""
    n = int(timestamps.shape[0])
    windows: dict[str, tuple[Window, ...]] = {}
    for metric in METRICS:
        onsets = [
            incident.onset for incident in incidents if metric in incident.metrics
        ]
        half = int(WINDOW_FRACTION * n / len(onsets)) // 2 if onsets else 0
        windows[metric] = tuple(
            (timestamps[max(0, onset - half)], timestamps[min(n - 1, onset + half)])
            for onset in onsets
        )
    return windows


# --- numeric helpers ------------------------------------------------------------------------


def _ar1(rng: np.random.Generator, n: int, phi: float, sigma: float) -> np.ndarray:
    """Stationary AR(1) noise with marginal std ``sigma``, as a truncated geometric filter."""
    if phi <= 0.0:
        return rng.normal(0.0, sigma, n)
    taps = int(np.ceil(np.log(1e-6) / np.log(phi)))
    innovations = rng.normal(0.0, sigma * np.sqrt(1.0 - phi**2), n + taps - 1)
    return np.convolve(innovations, phi ** np.arange(taps), mode="valid")


def _logistic(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _circular_bump(hour: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Gaussian bump on the 24-hour circle, so the profile joins up at midnight."""
    distance = (hour - centre + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (distance / width) ** 2)
