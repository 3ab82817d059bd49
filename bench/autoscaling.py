"""Scaling policies side by side over a suite of demand traces: hpa, predictive, oracle, static-peak.

Usage (from the repository root, with the model server running: ``make serve``)::

    .venv/bin/python bench/autoscaling.py
    .venv/bin/python bench/autoscaling.py --prediction-weight 0.7
    .venv/bin/python bench/autoscaling.py --model-server http://127.0.0.1:3000 --skip-speed

The suite: generated traces (daily cycles with ramps, spikes, growth and a nightly batch,
5-minute steps, ``--days`` days each, made here with numpy from fixed seeds) and the
request-count and CPU series of NAB's realAWSCloudwatch (read as demand; those with more
than 288 rows; skipped with a note when the folder is absent). Every policy runs through
the same cluster simulator and PolicyConfig (``actuators/autoscaler/backtest.py``);
forecasts come from the model server and are cached under ``state/backtest-cache/``.

Prints ONE JSON object: per-trace rows (trace, policy, SLO-violation minutes,
replica-hours, scaling actions, p95 latency), a ``summary`` (sums over the suite:
predictive / hpa and / static-peak, the oracle's too, and the goals as booleans), a
``decision_speed`` section (one ``ServicePolicy.decide`` call; one service's decision with its
model call; one cycle of 500 services with one batched forecast call), the model version,
the settings and the wall time.
Progress goes to stderr. Exit status 2: the model server is not reachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from actuators.autoscaler.backtest import (  # noqa: E402
    DEFAULT_CACHE,
    DEFAULT_MODEL_SERVER,
    POLICIES,
    BacktestSettings,
    ModelRef,
    ModelServerDown,
    Trace,
    TraceError,
    model_client,
    read_trace,
    report,
    run_policy,
    trace_forecasts,
)
from actuators.autoscaler.policy import ForecastView, Observation, PolicyConfig, ServicePolicy  # noqa: E402
from tmsops.errors import TmsopsError  # noqa: E402
from tmsops.model_client import SeriesIn  # noqa: E402

STEP_S = 300.0
DAY = 288  # 5-minute steps per day
START = datetime(2026, 1, 5)  # a Monday
NAB_DIR = REPO.parent / "shared" / "data" / "nab-dev" / "data" / "realAWSCloudwatch"
NAB_KINDS = ("cpu_utilization", "request_count")
FIGURES = ("slo_violation_minutes", "replica_hours", "scaling_actions", "p95_latency_ms")
GOALS = {"slo_ratio_vs_hpa": 0.5, "cost_ratio_vs_hpa": 1.0, "cost_ratio_vs_static_peak": 0.7}
CYCLE_GOAL_MS = 15_000.0


def progress(message: str) -> None:
    print(f"[autoscaling] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the suite


def _hours(days: int) -> np.ndarray:
    return np.arange(days * DAY) * STEP_S / 3600


def _business_day(hours: np.ndarray) -> np.ndarray:
    """A 0..1 daily shape: low at night, a morning and an afternoon hump; weekends at 60%."""
    hour = hours % 24
    shape = 0.15 + 0.85 * (np.exp(-(((hour - 10.5) / 2.5) ** 2)) + 0.9 * np.exp(-(((hour - 15.5) / 2.5) ** 2)))
    weekend = (hours // 24) % 7 >= 5
    return np.minimum(shape, 1.0) * np.where(weekend, 0.6, 1.0)


def _noisy(rng: np.random.Generator, values: np.ndarray, relative: float) -> np.ndarray:
    return np.clip(values * (1 + rng.normal(0, relative, len(values))), 0.0, None)


def trace_daily(days: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth business-day cycle with 4% noise."""
    return _noisy(rng, 40 + 260 * _business_day(_hours(days)), 0.04)


def trace_ramps(days: int, rng: np.random.Generator) -> np.ndarray:
    """A quiet night, a steep 30-minute morning ramp to 6x at 08:00, a plateau, a 2-hour evening decline."""
    hour = _hours(days) % 24
    up = np.clip((hour - 8.0) / 0.5, 0, 1)
    down = np.clip((20.0 - hour) / 2.0, 0, 1)
    return _noisy(rng, 50 + 250 * np.minimum(up, down), 0.05)


def trace_spikes(days: int, rng: np.random.Generator) -> np.ndarray:
    """The daily cycle plus unannounced flash crowds: 3 a day, x1.8..3 for 10..40 minutes, 5-minute onset."""
    values = 40 + 200 * _business_day(_hours(days))
    for start in rng.choice(len(values) - 12, size=3 * days, replace=False):
        length, factor = int(rng.integers(2, 9)), float(rng.uniform(1.8, 3.0))
        values[start : start + length] *= factor
    return _noisy(rng, values, 0.05)


def trace_growth(days: int, rng: np.random.Generator) -> np.ndarray:
    """A daily cycle growing 8% a day, with a scheduled batch job at 02:00 (x4 the night load for 30 min)."""
    hours = _hours(days)
    values = (30 + 170 * _business_day(hours)) * 1.08 ** (hours / 24)
    batch = (hours % 24 >= 2.0) & (hours % 24 < 2.5)
    values[batch] += 120 * 1.08 ** (hours[batch] / 24)
    return _noisy(rng, values, 0.04)


GENERATORS = {
    "gen-daily": trace_daily,
    "gen-ramps": trace_ramps,
    "gen-spikes": trace_spikes,
    "gen-growth": trace_growth,
}


def generated_traces(days: int, seed: int) -> list[Trace]:
    """The generated part of the suite, from fixed seeds."""
    traces = []
    for offset, (name, make) in enumerate(GENERATORS.items()):
        values = make(days, np.random.default_rng(seed + offset))
        traces.append(Trace.from_values(name, values, STEP_S, START))
    return traces


def nab_traces(folder: Path, context: int, max_gap_steps: int) -> tuple[list[Trace], list[str]]:
    """The request-count and CPU series of ``folder`` with more than ``context`` rows; notes on what was skipped."""
    if not folder.is_dir():
        return [], [f"{folder} is absent: the suite has the generated traces only"]
    traces, notes = [], []
    for path in sorted(folder.glob("*.csv")):
        if not any(kind in path.stem for kind in NAB_KINDS):
            continue
        try:
            trace = read_trace(path, max_gap_steps)
        except TraceError as error:
            notes.append(f"skipped {error.message}")
            continue
        if len(trace.values) <= context:
            notes.append(f"skipped {path.name}: {len(trace.values)} rows, not more than {context}")
            continue
        traces.append(trace)
    return traces, notes


# ---------------------------------------------------------------- running the suite


def run_suite(
    traces: Sequence[Trace], settings: BacktestSettings, url: str, cache_dir: Path
) -> tuple[list[dict[str, Any]], ModelRef | None]:
    """Every policy over every trace; one row per (trace, policy)."""
    rows: list[dict[str, Any]] = []
    model: ModelRef | None = None
    for number, trace in enumerate(traces, 1):
        began = time.perf_counter()
        forecasts, model = trace_forecasts(trace, url, settings, cache_dir)
        fetched = time.perf_counter() - began
        for policy in POLICIES:
            result, controller = run_policy(trace, policy, settings, forecasts)
            figures = report(trace, policy, result, controller, model)
            rows.append({"trace": trace.name, "policy": policy, **{key: figures[key] for key in FIGURES}})
        progress(
            f"{number}/{len(traces)} {trace.name}: {len(trace.values)} points, forecasts {fetched:.1f} s, "
            f"policies {time.perf_counter() - began - fetched:.1f} s"
        )
    return rows, model


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 4) if denominator > 0 else None


def ratios(totals: dict[str, dict[str, float]], policy: str) -> dict[str, float | None]:
    """``policy``'s SLO minutes and replica-hours over hpa's and static-peak's (sums over the suite)."""
    mine = totals[policy]
    return {
        "slo_ratio_vs_hpa": _ratio(mine["slo_violation_minutes"], totals["hpa"]["slo_violation_minutes"]),
        "cost_ratio_vs_hpa": _ratio(mine["replica_hours"], totals["hpa"]["replica_hours"]),
        "cost_ratio_vs_static_peak": _ratio(mine["replica_hours"], totals["static-peak"]["replica_hours"]),
    }


def policy_totals(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    totals = {policy: dict.fromkeys(FIGURES[:3], 0.0) for policy in POLICIES}
    for row in rows:
        for key in FIGURES[:3]:
            totals[row["policy"]][key] += row[key]
    return {policy: {key: round(value, 3) for key, value in figures.items()} for policy, figures in totals.items()}


def summary(rows: Sequence[dict[str, Any]], groups: dict[str, list[str]]) -> dict[str, Any]:
    """Ratios over the whole suite (predictive's at the top, the oracle's beside), goals and per-group ratios."""
    totals = policy_totals(rows)
    predictive = ratios(totals, "predictive")
    goals = {f"{name} <= {bound}": value is not None and value <= bound for (name, bound), value in _zip(predictive)}
    by_group = {}
    for group, names in groups.items():
        part = policy_totals([row for row in rows if row["trace"] in names])
        if names:
            by_group[group] = {"predictive": ratios(part, "predictive"), "oracle": ratios(part, "oracle")}
    return {
        **predictive,
        "oracle": ratios(totals, "oracle"),
        "goals": goals,
        "all_goals_met": all(goals.values()),
        "totals": totals,
        "by_suite": by_group,
    }


def _zip(predictive: dict[str, float | None]) -> list[tuple[tuple[str, float], float | None]]:
    return [((name, bound), predictive[name]) for name, bound in GOALS.items()]


# ---------------------------------------------------------------- decision speed


def _warm_policy(config: PolicyConfig, name: str) -> ServicePolicy:
    """A policy that has learned its capacity (a few observations at 50% CPU of 2 replicas serving 100/s)."""
    policy = ServicePolicy(name, config)
    for step in range(5):
        policy.decide(Observation(at=step * 15.0, replicas=2, cpu_utilization=50.0, demand=100.0), None)
    return policy


def _view(at: float, p50: Sequence[float], step_s: float = STEP_S) -> ForecastView:
    values = tuple(float(v) for v in p50)
    return ForecastView(at, step_s, tuple(0.9 * v for v in values), values, tuple(1.1 * v for v in values))


def decide_timing(calls: int, seed: int) -> dict[str, float]:
    """Microseconds per ``ServicePolicy.decide`` call with a forecast (p50, p99, mean over ``calls``)."""
    rng = np.random.default_rng(seed)
    policy = _warm_policy(PolicyConfig(max_replicas=50), "timing")
    cpu = rng.uniform(20, 95, calls)
    peaks = rng.uniform(50, 400, calls)
    durations = np.empty(calls)
    replicas = 2
    for index in range(calls):
        at = 100.0 + index * 15.0
        observation = Observation(at=at, replicas=replicas, cpu_utilization=float(cpu[index]), demand=100.0)
        view = _view(at, [peaks[index]] * 12)
        began = time.perf_counter_ns()
        replicas = policy.decide(observation, view).desired
        durations[index] = time.perf_counter_ns() - began
    micro = durations / 1000
    return {
        "calls": calls,
        "p50_us": round(float(np.percentile(micro, 50)), 2),
        "p99_us": round(float(np.percentile(micro, 99)), 2),
        "mean_us": round(float(micro.mean()), 2),
    }


async def _cycle(client: Any, policies: list[ServicePolicy], contexts: np.ndarray, at: float) -> dict[str, float]:
    """One decision cycle: one batched forecast call for every service, then every decision."""
    began = time.perf_counter()
    start = START + timedelta(seconds=at - contexts.shape[1] * STEP_S)
    series = [
        SeriesIn(id=policy.name, values=row.tolist(), start=start, step_s=STEP_S)
        for policy, row in zip(policies, contexts, strict=True)
    ]
    forecasts = await client.forecast(series)
    called = time.perf_counter()
    for policy, row, forecast in zip(policies, contexts, forecasts, strict=True):
        view = ForecastView(at, STEP_S, tuple(forecast.p10), tuple(forecast.p50), tuple(forecast.p90))
        observation = Observation(at=at, replicas=2, cpu_utilization=float(row[-1] / 4), demand=float(row[-1]))
        policy.decide(observation, view)
    done = time.perf_counter()
    return {"total_ms": (done - began) * 1000, "model_ms": (called - began) * 1000, "decide_ms": (done - called) * 1000}


async def one_service_timing(url: str, calls: int, context: int, seed: int) -> dict[str, Any]:
    """Milliseconds per decision for one service, its model call included (after one warm-up call)."""
    base = trace_spikes(7, np.random.default_rng(seed))
    policies = [_warm_policy(PolicyConfig(max_replicas=50), "one")]
    totals = []
    async with model_client(url) as client:
        for call in range(calls + 1):
            window = base[call : call + context][None, :] * 0.5
            figures = await _cycle(client, policies, window, at=1000.0 + call * 15.0)
            if call:
                totals.append(figures["total_ms"])
    return {
        "calls": calls,
        "p50_ms": round(float(np.percentile(totals, 50)), 2),
        "p99_ms": round(float(np.percentile(totals, 99)), 2),
        "goal_p99_ms": 100.0,
        "goal_met": float(np.percentile(totals, 99)) < 100.0,
    }


async def cycle_timing(url: str, services: int, cycles: int, context: int, seed: int) -> dict[str, Any]:
    """Milliseconds per decision cycle over ``services`` services (after one unmeasured warm-up cycle)."""
    base = trace_spikes(7, np.random.default_rng(seed))
    offsets = np.random.default_rng(seed + 1).integers(0, len(base) - context - cycles, services)
    policies = [_warm_policy(PolicyConfig(max_replicas=50), f"svc-{index}") for index in range(services)]
    measured = []
    async with model_client(url) as client:
        for cycle in range(cycles + 1):
            contexts = np.stack([base[o + cycle : o + cycle + context] for o in offsets]) * 0.5
            figures = await _cycle(client, policies, contexts, at=1000.0 + cycle * 15.0)
            if cycle:
                measured.append(figures)
    totals = [item["total_ms"] for item in measured]
    return {
        "services": services,
        "cycles": cycles,
        "p50_ms": round(float(np.median(totals)), 1),
        "max_ms": round(max(totals), 1),
        "model_call_p50_ms": round(float(np.median([item["model_ms"] for item in measured])), 1),
        "decisions_p50_ms": round(float(np.median([item["decide_ms"] for item in measured])), 1),
        "goal_ms": CYCLE_GOAL_MS,
        "goal_met": max(totals) < CYCLE_GOAL_MS,
    }


# ---------------------------------------------------------------- main


def parse_options(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-server", default=DEFAULT_MODEL_SERVER, help="model server URL")
    parser.add_argument("--prediction-weight", type=float, default=PolicyConfig.prediction_weight)
    parser.add_argument("--quantile", choices=("p50", "p90"), default="p50")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds of trace time between decisions")
    parser.add_argument("--startup", type=float, default=120.0, help="replica start-up delay, trace seconds")
    parser.add_argument("--days", type=int, default=7, help="days per generated trace (>= 4)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--nab-dir", type=Path, default=NAB_DIR)
    parser.add_argument("--cache-dir", type=Path, default=REPO / DEFAULT_CACHE)
    parser.add_argument("--services", type=int, default=500, help="services per decision cycle")
    parser.add_argument("--cycles", type=int, default=5, help="measured decision cycles")
    parser.add_argument("--decide-calls", type=int, default=20_000)
    parser.add_argument("--skip-speed", action="store_true", help="leave out the decision_speed section")
    options = parser.parse_args(argv)
    if options.days < 4 or not 0 <= options.prediction_weight <= 1:
        parser.error("--days must be >= 4 and --prediction-weight within 0..1")
    return options


def run(options: argparse.Namespace) -> dict[str, Any]:
    began = time.perf_counter()
    settings = BacktestSettings(
        interval_s=options.interval,
        startup_s=options.startup,
        prediction_weight=options.prediction_weight,
        quantile=options.quantile,
    )
    generated = generated_traces(options.days, options.seed)
    nab, notes = nab_traces(options.nab_dir, settings.context, settings.max_gap_steps)
    progress(f"suite: {len(generated)} generated and {len(nab)} NAB traces; {len(POLICIES)} policies each")
    rows, model = run_suite([*generated, *nab], settings, options.model_server, options.cache_dir)
    groups = {"generated": [t.name for t in generated], "nab": [t.name for t in nab]}
    result: dict[str, Any] = {
        "bench": "autoscaling",
        "model": model.public() if model else None,
        "summary": summary(rows, groups),
        "rows": rows,
        "traces": [_describe(trace, settings) for trace in [*generated, *nab]],
        "nab": {"dir": str(options.nab_dir), "used": groups["nab"], "notes": notes},
        "settings": {**asdict(settings), "days": options.days, "seed": options.seed, "policies": list(POLICIES)},
    }
    if not options.skip_speed:
        progress("decision speed")
        result["decision_speed"] = {
            "decide": decide_timing(options.decide_calls, options.seed),
            "one_service": asyncio.run(one_service_timing(options.model_server, 200, settings.context, options.seed)),
            "cycle": asyncio.run(
                cycle_timing(options.model_server, options.services, options.cycles, settings.context, options.seed)
            ),
        }
    result["wall_time_s"] = round(time.perf_counter() - began, 1)
    return result


def _describe(trace: Trace, settings: BacktestSettings) -> dict[str, Any]:
    return {
        "trace": trace.name,
        "points": len(trace.values),
        "hours": round(trace.duration_hours, 1),
        "peak": round(float(trace.values.max()), 3),
        "capacity_per_replica": round(settings.capacity(trace), 4),
    }


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(sys.argv[1:] if argv is None else argv)
    try:
        result = run(options)
    except ModelServerDown as error:
        print(f"bench/autoscaling.py: {error.message}", file=sys.stderr)
        return 2
    except TmsopsError as error:
        print(f"bench/autoscaling.py: {error.message}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=_json_default))
    return 0


def _json_default(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
