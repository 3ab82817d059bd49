"""Code checks of the cluster simulator and the backtest's trace reading, on hand-made traces."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from actuators.autoscaler.backtest import (
    BacktestSettings,
    Trace,
    TraceError,
    UnknownPolicy,
    backtest,
    read_trace,
    report,
    run_policy,
    static_replicas,
)
from actuators.autoscaler.policy import Observation
from actuators.autoscaler.simulator import (
    Cluster,
    ClusterModel,
    ForecastTable,
    StaticController,
    simulate,
    tick_demand,
)

START = datetime(2026, 1, 5)
MODEL = ClusterModel(mu=10.0, startup_s=120.0, service_time_s=0.05, slo_s=0.25)


@dataclass
class Scripted:
    """A controller that asks for ``desired`` from the first decision on and records what it saw."""

    desired: int
    started: list[float] = field(default_factory=list)
    seen: list[Observation] = field(default_factory=list)

    def replica_ready(self, startup_s: float) -> None:
        self.started.append(startup_s)

    def decide(self, observation: Observation) -> int:
        self.seen.append(observation)
        return self.desired


def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("timestamp,value\n" + "".join(f"{stamp},{value}\n" for stamp, value in rows))
    return path


def _stamps(n: int, step_min: int = 5) -> list[str]:
    return [f"2026-01-05 {minute // 60:02d}:{minute % 60:02d}:00" for minute in range(0, n * step_min, step_min)]


def test_tick_demand_interpolates_at_tick_midpoints() -> None:
    demand = tick_demand(np.array([0.0, 10.0, 10.0]), step_s=120.0, tick_s=60.0)
    np.testing.assert_allclose(demand, [2.5, 7.5, 10.0, 10.0])


def test_serving_below_capacity_has_no_backlog_and_the_queueing_latency() -> None:
    cluster = Cluster(MODEL, ready=2)
    served, latency = cluster.serve(14.0, 60.0)
    assert served == pytest.approx(14.0)
    assert cluster.backlog == 0
    assert latency == pytest.approx(0.05 / (1 - 0.7))


def test_overload_builds_a_backlog_that_adds_latency_and_drains() -> None:
    cluster = Cluster(MODEL, ready=1)
    served, latency = cluster.serve(12.0, 60.0)
    assert served == pytest.approx(10.0)
    assert cluster.backlog == pytest.approx(120.0)
    assert latency == pytest.approx(0.05 * MODEL.max_queue_factor + 120.0 / 10.0)
    served, latency = cluster.serve(5.0, 60.0)
    assert served == pytest.approx(7.0)
    assert cluster.backlog == 0
    assert latency == pytest.approx(0.05 / (1 - 0.7))


def test_a_backlog_longer_than_the_timeout_is_dropped() -> None:
    cluster = Cluster(MODEL, ready=1)
    cluster.serve(20.0, 60.0)
    assert cluster.backlog == pytest.approx(10.0 * MODEL.timeout_s)
    assert cluster.dropped == pytest.approx(600.0 - 300.0)


def test_scale_down_is_immediate_and_removes_starting_replicas_first() -> None:
    cluster = Cluster(MODEL, ready=2)
    cluster.scale_to(4, now=0.0)
    assert (cluster.ready, len(cluster.starting)) == (2, 2)
    cluster.scale_to(3, now=10.0)
    assert (cluster.ready, len(cluster.starting)) == (2, 1)
    cluster.scale_to(1, now=20.0)
    assert (cluster.ready, len(cluster.starting)) == (1, 0)


def test_new_replicas_serve_only_after_the_startup_delay() -> None:
    controller = Scripted(desired=3)
    values = np.full(7, 25.0)  # 2.5 replicas of work
    result = simulate(values, 60.0, MODEL, controller, tick_s=60.0, initial=1)
    # asked for at the end of tick 0 (t = 60 s), ready at 180 s: tick 3 is the first they serve
    np.testing.assert_array_equal(result.replicas, [1, 3, 3, 3, 3, 3])
    assert controller.started == [120.0, 120.0]
    assert result.latency_s[1] > 1.0 and result.latency_s[2] > 1.0  # still one replica serving
    assert result.scaling_actions == 1
    # starting replicas count at 0% CPU, so the controller sees demand over every replica asked for
    assert controller.seen[1].cpu_utilization == pytest.approx(10.0 / 30.0 * 100)
    assert controller.seen[1].demand == pytest.approx(10.0)


def test_slo_minutes_and_replica_hours_on_a_hand_made_trace() -> None:
    values = np.array([5.0, 5.0, 9.0, 9.0, 9.0, 5.0, 5.0])  # tick demand 5, 7, 9, 9, 7, 5 at mu 10
    result = simulate(values, 60.0, MODEL, StaticController(1), tick_s=60.0, initial=1)
    np.testing.assert_allclose(result.latency_s, [0.1, 0.05 / 0.3, 0.5, 0.5, 0.05 / 0.3, 0.1])
    assert result.slo_violation_minutes == pytest.approx(2.0)
    assert result.replica_hours == pytest.approx(6 / 60)
    assert result.p95_latency_ms == pytest.approx(500.0)
    three = simulate(values, 60.0, MODEL, StaticController(3), tick_s=60.0, initial=3)
    assert three.slo_violation_minutes == 0
    assert three.replica_hours == pytest.approx(3 * 6 / 60)
    assert three.scaling_actions == 0


def test_forecast_table_gives_the_newest_forecast_made_at_or_before_now() -> None:
    values = np.arange(10.0)
    table = ForecastTable.oracle(values, step_s=300.0, horizon=3)
    view = table.view(650.0)
    assert view is not None
    assert view.at == 600.0 and view.step_s == 300.0
    assert view.p50 == (3.0, 4.0, 5.0) == view.p10 == view.p90
    last = table.view(8 * 300.0)
    assert last is not None and last.p50 == (9.0, 9.0, 9.0)  # padded past the trace's end
    assert table.view(9 * 300.0) is None  # the last point has no future
    later = ForecastTable(300.0, 4, table.p10[4:], table.p50[4:], table.p90[4:])
    assert later.view(1199.0) is None
    assert later.view(1200.0) is not None


def _ramp() -> Trace:
    """Two quiet hours, a one-hour ramp to four times the load, three busy hours (5-minute steps)."""
    values = np.concatenate([np.full(24, 100.0), np.linspace(100.0, 400.0, 12), np.full(36, 400.0)])
    return Trace.from_values("ramp", values, 300.0, START)


def test_static_peak_uses_the_count_the_peak_needs_at_the_target() -> None:
    trace, settings = _ramp(), BacktestSettings()
    assert settings.capacity(trace) == pytest.approx(400.0 / (8 * 0.7))
    assert static_replicas(trace, settings) == 8
    assert static_replicas(trace, BacktestSettings(peak_replicas=30)) == settings.max_replicas
    result, _ = run_policy(trace, "static-peak", settings)
    assert set(result.replicas.tolist()) == {8}
    assert result.slo_violation_minutes == 0


def test_oracle_beats_hpa_on_a_ramp() -> None:
    trace, settings = _ramp(), BacktestSettings()
    hpa, hpa_controller = run_policy(trace, "hpa", settings)
    oracle, oracle_controller = run_policy(trace, "oracle", settings)
    assert oracle.slo_violation_minutes < hpa.slo_violation_minutes
    figures = report(trace, "oracle", oracle, oracle_controller, None)
    assert figures["forecast_share"] > 0.9  # capacity was learned from observations within minutes
    assert report(trace, "hpa", hpa, hpa_controller, None)["forecast_share"] == 0


def test_read_trace_interpolates_a_short_gap(tmp_path: Path) -> None:
    stamps = _stamps(6)
    rows = [(stamp, str(10.0 * i)) for i, stamp in enumerate(stamps) if i != 3]
    trace = read_trace(_csv(tmp_path / "gap.csv", rows))
    assert trace.step_s == 300.0
    np.testing.assert_allclose(trace.values, [0, 10, 20, 30, 40, 50])
    assert trace.name == "gap" and trace.start == START


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        ([("2026-01-05 00:00:00", "1"), ("2026-01-05 00:05:00", "-2")], "row 2 (line 3): demand -2 is negative"),
        ([("2026-01-05 00:00:00", "1"), ("2026-01-05 00:05:00", "lots")], "row 2 (line 3): demand 'lots'"),
        ([("2026-01-05 00:00:00", "nan"), ("2026-01-05 00:05:00", "1")], "row 1 (line 2): demand 'nan'"),
        ([("yesterday", "1"), ("2026-01-05 00:05:00", "1")], "row 1 (line 2): timestamp 'yesterday'"),
        ([("2026-01-05 00:00:00", "1")], "at least 2 rows, got 1"),
    ],
)
def test_bad_rows_are_refused_naming_file_and_row(tmp_path: Path, rows: list[tuple[str, str]], problem: str) -> None:
    path = _csv(tmp_path / "bad.csv", rows)
    with pytest.raises(TraceError) as caught:
        read_trace(path)
    assert str(path) in caught.value.message
    assert problem in caught.value.message


def test_gaps_and_irregular_steps_are_refused(tmp_path: Path) -> None:
    stamps = _stamps(40)
    long_gap = [(stamp, "1") for i, stamp in enumerate(stamps) if not 5 <= i < 20]
    with pytest.raises(TraceError, match=r"row 6: a gap of 16 steps \(4800 s\)"):
        read_trace(_csv(tmp_path / "gap.csv", long_gap))
    odd = [(stamp, "1") for stamp in stamps[:10]] + [("2026-01-05 00:52:00", "1")]
    with pytest.raises(TraceError, match=r"row 11: irregular timestamp, 420 s"):
        read_trace(_csv(tmp_path / "odd.csv", odd))
    backwards = [(stamps[1], "1"), (stamps[0], "1")]
    with pytest.raises(TraceError, match="row 2: timestamp is not after"):
        read_trace(_csv(tmp_path / "back.csv", backwards))


def test_header_must_name_timestamp_and_value(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("time,load\n2026-01-05 00:00:00,1\n")
    with pytest.raises(TraceError, match="timestamp and value"):
        read_trace(path)


def test_predictive_needs_more_rows_than_the_context_before_any_model_call(tmp_path: Path) -> None:
    path = _csv(tmp_path / "short.csv", [(stamp, "5") for stamp in _stamps(100)])
    with pytest.raises(TraceError, match=r"needs more than 288 rows .* got 100"):
        backtest(path, "predictive", BacktestSettings(), model_server="http://127.0.0.1:9")


def test_unknown_policy_is_refused(tmp_path: Path) -> None:
    path = _csv(tmp_path / "ok.csv", [(stamp, "5") for stamp in _stamps(10)])
    with pytest.raises(UnknownPolicy, match="unknown policy 'vpa'"):
        backtest(path, "vpa", BacktestSettings())


def test_hpa_backtest_report_has_the_figures(tmp_path: Path) -> None:
    values = 100 + 50 * np.sin(np.arange(60) / 10)
    path = _csv(tmp_path / "sine.csv", [(stamp, f"{v:.3f}") for stamp, v in zip(_stamps(60), values, strict=True)])
    figures = backtest(path, "hpa", BacktestSettings())
    assert figures["trace"] == "sine" and figures["policy"] == "hpa" and figures["model"] is None
    assert figures["duration_hours"] == pytest.approx(59 * 5 / 60, abs=1e-3)
    assert figures["replica_hours"] > 0
    assert figures["scaling_actions"] >= 0
    assert math.isfinite(figures["p95_latency_ms"])
    assert figures["settings"]["interval_s"] == 60.0
