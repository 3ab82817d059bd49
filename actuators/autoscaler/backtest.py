"""Backtests: replay a demand trace through a scaling policy in the cluster simulator.

Policies, all but ``static-peak`` through the same :class:`ServicePolicy` and PolicyConfig:

- ``hpa``: never a forecast (reactive only, the decision's ``fallback`` is set);
- ``predictive``: forecasts of the model server for the demand series, one per trace step
  from the last ``context`` points (before that there is none and the policy falls back);
- ``oracle``: the true future demand as the forecast (p10 = p50 = p90 = the next steps);
- ``static-peak``: a fixed ``ceil(peak / (mu x target))`` replicas, no decisions.

Per trace the replica capacity ``mu`` is chosen so that the trace's peak needs
``peak_replicas`` (8) replicas at the CPU target (70%): ``mu = peak / (8 x 0.7)``. The
policies never see ``mu``: they learn capacity from observations, as live. Decisions are
made every ``interval_s`` of trace time (60 s by default, to keep a backtest fast; the live
loop decides every 15 s), and the replica start-up delay is ``startup_s`` of trace time.

Forecasts for a whole trace are computed up front in batches and cached on disk per (trace
content, model name, version and run) under ``state/backtest-cache/``.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from actuators.autoscaler.policy import PolicyConfig, Quantile, ServicePolicy
from actuators.autoscaler.simulator import (
    ClusterModel,
    Controller,
    ForecastTable,
    PolicyController,
    SimResult,
    StaticController,
    simulate,
)
from tmsops.errors import DataError, PermanentError, TemporaryError
from tmsops.model_client import Forecast, ModelClient, SeriesIn

POLICIES = ("hpa", "predictive", "oracle", "static-peak")
DEFAULT_CACHE = Path("state/backtest-cache")
DEFAULT_MODEL_SERVER = "http://127.0.0.1:3000"
ORACLE_HORIZON = 12


class TraceError(DataError):
    """A trace file that cannot be replayed; the message names the file and the row."""


class UnknownPolicy(PermanentError):
    """A policy name that is not one of :data:`POLICIES`."""


class ModelServerDown(TemporaryError):
    """The model server is not reachable or not ready; start it and retry."""


class ModelChanged(TemporaryError):
    """The champion model changed while a trace was being forecast; run it again."""


@dataclass(frozen=True)
class Trace:
    """Demand (requests/s) at a regular step, oldest first; ``digest`` identifies the content."""

    name: str
    values: np.ndarray
    step_s: float
    start: datetime
    digest: str

    @property
    def duration_hours(self) -> float:
        return (len(self.values) - 1) * self.step_s / 3600

    @classmethod
    def from_values(cls, name: str, values: Sequence[float] | np.ndarray, step_s: float, start: datetime) -> Trace:
        """A trace from values in memory (digest of the values, step and start)."""
        array = np.asarray(values, dtype=np.float64)
        digest = hashlib.sha256(array.tobytes() + f"{step_s}|{start.isoformat()}".encode()).hexdigest()
        return cls(name, array, float(step_s), start, digest)


@dataclass(frozen=True)
class BacktestSettings:
    """Everything a backtest run depends on besides the trace (documented defaults)."""

    interval_s: float = 60.0
    startup_s: float = 120.0
    prediction_weight: float = PolicyConfig.prediction_weight
    quantile: Quantile = "p50"
    peak_replicas: int = 8
    min_replicas: int = 1
    max_replicas: int = 20
    service_time_ms: float = 50.0
    slo_ms: float = 250.0
    context: int = 288
    batch_size: int = 256
    max_gap_steps: int = 12

    def policy_config(self) -> PolicyConfig:
        return PolicyConfig(
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            prediction_weight=self.prediction_weight,
            quantile=self.quantile,
            interval_s=self.interval_s,
        )

    def capacity(self, trace: Trace) -> float:
        """Per-replica capacity ``mu``: the trace's peak needs ``peak_replicas`` at the CPU target."""
        peak = float(trace.values.max())
        if peak <= 0:
            raise TraceError(trace.name, "the demand is zero everywhere: nothing to scale")
        return peak / (self.peak_replicas * self.policy_config().cpu_scale_up / 100)

    def cluster(self, trace: Trace) -> ClusterModel:
        return ClusterModel(
            mu=self.capacity(trace),
            startup_s=self.startup_s,
            service_time_s=self.service_time_ms / 1000,
            slo_s=self.slo_ms / 1000,
        )


@dataclass(frozen=True)
class ModelRef:
    """The forecaster that made a trace's forecasts."""

    name: str
    version: str
    run_id: str | None = None

    def public(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}


# ---------------------------------------------------------------- reading traces


def read_trace(path: Path, max_gap_steps: int = 12) -> Trace:
    """A ``timestamp,value`` CSV as a regular trace; gaps up to ``max_gap_steps`` steps are interpolated."""
    source = str(path)
    try:
        content = path.read_bytes()
    except OSError as error:
        raise TraceError(source, f"cannot read the trace: {error.strerror or error}") from error
    stamps, values = _parse_rows(source, content.decode("utf-8-sig", errors="replace").splitlines())
    if len(values) < 2:
        raise TraceError(source, f"a trace needs at least 2 rows, got {len(values)}")
    seconds = np.array([(stamp - stamps[0]).total_seconds() for stamp in stamps])
    step = _regular_step(source, seconds, max_gap_steps)
    grid = np.arange(0, seconds[-1] + step / 2, step)
    regular = np.interp(grid, seconds, np.array(values))
    digest = hashlib.sha256(content).hexdigest()
    return Trace(path.stem, regular, step, stamps[0], digest)


def _parse_rows(source: str, lines: list[str]) -> tuple[list[datetime], list[float]]:
    reader = csv.reader(lines)
    header = [name.strip().lower() for name in next(reader, [])]
    if "timestamp" not in header or "value" not in header:
        raise TraceError(source, f"the header must name the columns timestamp and value, got {header}")
    at, column = header.index("timestamp"), header.index("value")
    stamps: list[datetime] = []
    values: list[float] = []
    for row_number, row in enumerate(reader, 1):
        if not any(cell.strip() for cell in row):
            continue
        where = f"row {row_number} (line {reader.line_num})"
        stamps.append(_timestamp(source, where, row, at))
        values.append(_demand(source, where, row, column))
    return stamps, values


def _timestamp(source: str, where: str, row: list[str], column: int) -> datetime:
    text = row[column].strip() if column < len(row) else ""
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise TraceError(source, f"{where}: timestamp {text!r} is not an ISO date-time") from None
    return stamp.astimezone(UTC).replace(tzinfo=None) if stamp.tzinfo else stamp


def _demand(source: str, where: str, row: list[str], column: int) -> float:
    text = row[column].strip() if column < len(row) else ""
    try:
        value = float(text)
    except ValueError:
        raise TraceError(source, f"{where}: demand {text!r} is not a number") from None
    if not math.isfinite(value):
        raise TraceError(source, f"{where}: demand {text!r} is not a finite number")
    if value < 0:
        raise TraceError(source, f"{where}: demand {value:g} is negative")
    return value


def _regular_step(source: str, seconds: np.ndarray, max_gap_steps: int) -> float:
    """The median step; every interval must be a whole number of steps (within 10%), at most ``max_gap_steps``."""
    gaps = np.diff(seconds)
    for index, gap in enumerate(gaps):
        if gap <= 0:
            raise TraceError(source, f"row {index + 2}: timestamp is not after the previous row's")
    step = float(np.median(gaps))
    for index, gap in enumerate(gaps):
        steps = round(gap / step)
        if abs(gap - steps * step) > 0.1 * step or steps < 1:
            raise TraceError(
                source, f"row {index + 2}: irregular timestamp, {gap:g} s after the previous row (step {step:g} s)"
            )
        if steps > max_gap_steps:
            raise TraceError(
                source,
                f"row {index + 2}: a gap of {steps} steps ({gap:g} s) before it; at most {max_gap_steps} allowed",
            )
    return step


# ---------------------------------------------------------------- forecasts


def trace_forecasts(
    trace: Trace, model_server: str, settings: BacktestSettings, cache_dir: Path = DEFAULT_CACHE
) -> tuple[ForecastTable, ModelRef]:
    """One forecast per trace step from the last ``context`` points, from the cache or the model server."""
    if len(trace.values) <= settings.context:
        raise TraceError(
            trace.name,
            f"the predictive policy needs more than {settings.context} rows (the forecaster's context), "
            f"got {len(trace.values)}",
        )
    return asyncio.run(_trace_forecasts(trace, model_server, settings, cache_dir))


async def _trace_forecasts(
    trace: Trace, url: str, settings: BacktestSettings, cache_dir: Path
) -> tuple[ForecastTable, ModelRef]:
    async with model_client(url) as client:
        first = settings.context - 1
        probe = (await client.forecast([_series(trace, first, settings.context)]))[0]
        ref = _model_ref(probe, await client.model_info())
        path = cache_path(cache_dir, trace, ref, settings.context)
        if path.is_file():
            return _load(path, trace.step_s), ref
        table = await _forecast_all(client, trace, settings, ref)
        _save(path, table)
        return table, ref


def model_client(url: str) -> _ReadyClient:
    """A model-server client that first checks the server is ready (raises :class:`ModelServerDown`)."""
    return _ReadyClient(url)


class _ReadyClient:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client = ModelClient(url, timeout_s=120.0, retries=2)

    async def __aenter__(self) -> ModelClient:
        if not await self.client.ready():
            await self.client.aclose()
            raise ModelServerDown(
                f"the model server at {self.url} is not reachable or not ready: start it with `make serve` "
                "(or pass --model-server URL)",
                retry_after=5.0,
            )
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()


def _series(trace: Trace, end: int, context: int) -> SeriesIn:
    """The ``context`` points up to and including point ``end``."""
    begin = end - context + 1
    start = trace.start + timedelta(seconds=begin * trace.step_s)
    return SeriesIn(id=str(end), values=trace.values[begin : end + 1].tolist(), start=start, step_s=trace.step_s)


def _model_ref(probe: Forecast, info: dict[str, Any]) -> ModelRef:
    models = info.get("models") or []
    run_ids = [
        m.get("run_id") for m in models if m.get("name") == probe.model and str(m.get("version")) == probe.version
    ]
    return ModelRef(probe.model, probe.version, run_ids[0] if run_ids else None)


async def _forecast_all(client: ModelClient, trace: Trace, settings: BacktestSettings, ref: ModelRef) -> ForecastTable:
    """Forecasts from every point ``context - 1 .. n - 2`` in batches of ``batch_size``, two requests at a time."""
    ends = range(settings.context - 1, len(trace.values) - 1)
    batches = [ends[i : i + settings.batch_size] for i in range(0, len(ends), settings.batch_size)]
    gate = asyncio.Semaphore(2)

    async def one(batch: range) -> list[Forecast]:
        async with gate:
            return await client.forecast([_series(trace, end, settings.context) for end in batch])

    results = [item for batch in await asyncio.gather(*(one(b) for b in batches)) for item in batch]
    if any((item.model, item.version) != (ref.name, ref.version) for item in results):
        raise ModelChanged(f"the champion forecaster changed while {trace.name} was being forecast; run it again")
    horizon = min(len(item.p50) for item in results)
    p10, p50, p90 = (np.array([getattr(item, q)[:horizon] for item in results]) for q in ("p10", "p50", "p90"))
    return ForecastTable(trace.step_s, settings.context - 1, p10, p50, p90)


def cache_path(cache_dir: Path, trace: Trace, ref: ModelRef, context: int) -> Path:
    key = f"{trace.digest}|{trace.step_s}|{ref.name}|{ref.version}|{ref.run_id}|{context}"
    return cache_dir / f"{trace.name}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"


def _load(path: Path, step_s: float) -> ForecastTable:
    with np.load(path) as data:
        return ForecastTable(step_s, int(data["first"]), data["p10"], data["p50"], data["p90"])


def _save(path: Path, table: ForecastTable) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(partial, first=table.first, p10=table.p10, p50=table.p50, p90=table.p90)
    partial.replace(path)


# ---------------------------------------------------------------- running policies


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise UnknownPolicy(f"unknown policy {policy!r}: choose one of {', '.join(POLICIES)}")
    return policy


def static_replicas(trace: Trace, settings: BacktestSettings) -> int:
    """``ceil(peak / (mu x target))``, within min..max replicas."""
    target = settings.policy_config().cpu_scale_up / 100
    needed = math.ceil(float(trace.values.max()) / (settings.capacity(trace) * target) - 1e-9)
    return min(max(needed, settings.min_replicas), settings.max_replicas)


def initial_replicas(trace: Trace, settings: BacktestSettings) -> int:
    """What the first point needs at the CPU target: every scaling policy starts from it."""
    target = settings.policy_config().cpu_scale_up / 100
    needed = math.ceil(float(trace.values[0]) / (settings.capacity(trace) * target) - 1e-9)
    return min(max(needed, settings.min_replicas), settings.max_replicas)


def controller_for(
    policy: str, trace: Trace, settings: BacktestSettings, forecasts: ForecastTable | None
) -> Controller:
    """The controller of ``policy``; ``predictive`` needs ``forecasts``."""
    check_policy(policy)
    if policy == "static-peak":
        return StaticController(static_replicas(trace, settings))
    service = ServicePolicy(trace.name, settings.policy_config())
    if policy == "hpa":
        return PolicyController(service, None, "hpa: reactive only")
    if policy == "oracle":
        return PolicyController(service, ForecastTable.oracle(trace.values, trace.step_s, ORACLE_HORIZON))
    if forecasts is None:
        raise ValueError("the predictive policy needs the trace's forecasts")
    return PolicyController(service, forecasts, f"no forecast before {settings.context} points")


def run_policy(
    trace: Trace, policy: str, settings: BacktestSettings, forecasts: ForecastTable | None = None
) -> tuple[SimResult, Controller]:
    """Simulate ``policy`` over ``trace``."""
    controller = controller_for(policy, trace, settings, forecasts)
    start = static_replicas(trace, settings) if policy == "static-peak" else initial_replicas(trace, settings)
    result = simulate(trace.values, trace.step_s, settings.cluster(trace), controller, settings.interval_s, start)
    return result, controller


def report(
    trace: Trace, policy: str, result: SimResult, controller: Controller, model: ModelRef | None
) -> dict[str, Any]:
    """The figures of one run, as one flat JSON-ready dict."""
    share = None
    if isinstance(controller, PolicyController) and controller.decisions:
        share = round(controller.with_forecast / controller.decisions, 4)
    return {
        "trace": trace.name,
        "policy": policy,
        "duration_hours": round(trace.duration_hours, 3),
        "slo_violation_minutes": round(result.slo_violation_minutes, 2),
        "replica_hours": round(result.replica_hours, 3),
        "scaling_actions": result.scaling_actions,
        "p95_latency_ms": round(result.p95_latency_ms, 2),
        "dropped_requests": round(result.dropped_requests, 1),
        "forecast_share": share,
        "model": model.public() if model is not None and policy == "predictive" else None,
    }


def backtest(
    path: Path,
    policy: str,
    settings: BacktestSettings,
    model_server: str = DEFAULT_MODEL_SERVER,
    cache_dir: Path = DEFAULT_CACHE,
) -> dict[str, Any]:
    """Read ``path``, run ``policy`` over it, and return the report (with the settings used)."""
    check_policy(policy)
    trace = read_trace(path, settings.max_gap_steps)
    forecasts, model = (None, None)
    if policy == "predictive":
        forecasts, model = trace_forecasts(trace, model_server, settings, cache_dir)
    result, controller = run_policy(trace, policy, settings, forecasts)
    figures = report(trace, policy, result, controller, model)
    figures["capacity_per_replica"] = round(settings.capacity(trace), 4)
    figures["settings"] = asdict(settings)
    return figures
