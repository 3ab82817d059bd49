"""The scaling decision: the HPA rule, the forecast and its band, the blend and the bounds."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from actuators.autoscaler.backfill import contiguous_steps
from actuators.autoscaler.history import DemandHistory
from actuators.autoscaler.policy import (
    CapacityModel,
    ForecastView,
    Observation,
    PolicyConfig,
    ServicePolicy,
    forecast_peak,
    forecast_upper,
    reactive_desire,
    replica_bounds,
)

CONFIG = PolicyConfig()


def observe(
    replicas: int, cpu: float | None = None, memory: float | None = None, at: float = 0.0, demand: float | None = None
) -> Observation:
    return Observation(at=at, replicas=replicas, cpu_utilization=cpu, memory_utilization=memory, demand=demand)


@pytest.mark.parametrize(
    ("replicas", "cpu", "memory", "expected"),
    [
        (2, 140.0, None, 4),  # ceil(2 x 140 / 70)
        (3, 75.0, None, 3),  # within the 10% tolerance of 70
        (3, 80.0, None, 4),  # ceil(3 x 80 / 70)
        (4, 50.0, None, 4),  # between scaleDown 30 and scaleUp 70: no change
        (4, 20.0, None, 2),  # ceil(4 x 20 / 70)
        (2, 20.0, 120.0, 3),  # memory over 80 wins: ceil(2 x 120 / 80)
        (4, None, 20.0, 1),  # memory alone may scale down: ceil(4 x 20 / 80)
        (4, None, None, 4),  # no metric: keep
    ],
)
def test_the_reactive_answer_is_the_hpa_rule(
    replicas: int, cpu: float | None, memory: float | None, expected: int
) -> None:
    assert reactive_desire(observe(replicas, cpu, memory), CONFIG)[0] == expected


def test_a_missing_metric_never_votes_for_fewer_replicas() -> None:
    answer, why = reactive_desire(observe(4, cpu=None, memory=50.0), CONFIG)
    assert answer == 4
    assert "memory 50% within 40..80%" in why


def forecast(values: list[float], at: float = 0.0, step_s: float = 15.0, spread: float = 0.1) -> ForecastView:
    return ForecastView(
        at=at,
        step_s=step_s,
        p10=tuple(value * (1 - spread) for value in values),
        p50=tuple(values),
        p90=tuple(value * (1 + spread) for value in values),
    )


def learned(config: PolicyConfig = CONFIG, per_replica_at_70: float = 100.0) -> ServicePolicy:
    """A policy that has seen a replica serve ``per_replica_at_70`` requests/s at 70% CPU."""
    policy = ServicePolicy("svc", config, startup_s=30.0)
    for step in range(5):
        policy.capacity.observe(Observation(at=step, replicas=2, cpu_utilization=70.0, demand=2 * per_replica_at_70))
    return policy


def test_capacity_is_learned_from_demand_and_utilisation() -> None:
    model = CapacityModel(target_utilization=70.0)
    for _ in range(3):
        model.observe(Observation(at=0, replicas=4, cpu_utilization=35.0, demand=200.0))
    assert model.per_replica == pytest.approx(100.0)  # 50/s per replica at 35% -> 100/s at 70%


def test_the_upper_bound_widens_the_p50_to_p90_distance_over_the_same_steps() -> None:
    view = ForecastView(0.0, 15.0, p10=(0, 0, 0, 0), p50=(10, 20, 90, 30), p90=(40, 30, 100, 300))
    assert forecast_upper(view, now=0.0, lead_time_s=45.0, band_scale=2.0) == 110  # 90 + 2 x 10 at 45 s
    assert forecast_upper(view, now=0.0, lead_time_s=15.0, band_scale=2.0) == 70  # 10 + 2 x 30: the next step
    assert forecast_upper(view, now=0.0, lead_time_s=45.0, band_scale=0.0) == 90  # no band: the p50 peak


def test_the_forecast_peak_covers_the_steps_that_reach_the_lead_time() -> None:
    view = forecast([10, 20, 90, 30, 500], at=0.0, step_s=15.0)
    assert forecast_peak(view, now=0.0, lead_time_s=45.0, quantile="p50") == 90  # steps at 15, 30, 45 s
    assert forecast_peak(view, now=0.0, lead_time_s=40.0, quantile="p50") == 90  # and the first at or after 40 s
    assert forecast_peak(view, now=0.0, lead_time_s=5.0, quantile="p50") == 10  # at least the next step
    assert forecast_peak(view, now=0.0, lead_time_s=45.0, quantile="p90") == pytest.approx(99.0)


def test_a_step_mean_is_dated_at_the_middle_of_its_step() -> None:
    means = replace(forecast([10, 20, 90, 30, 500], at=0.0, step_s=15.0), point_in_step=0.5)
    assert forecast_peak(means, now=0.0, lead_time_s=25.0, quantile="p50") == 90  # the 3rd step: its mean is at 37.5 s
    assert forecast_peak(means, now=0.0, lead_time_s=22.5, quantile="p50") == 20  # 2nd step's middle reaches 22.5 s
    assert forecast_peak(means, now=0.0, lead_time_s=5.0, quantile="p50") == 10


def test_the_lead_time_counts_from_when_the_decision_is_taken() -> None:
    config = PolicyConfig(prediction_weight=1.0, interval_s=15.0)
    ahead = forecast([100.0, 100.0, 100.0, 400.0], at=0.0)  # 400/s in the step ending at 60 s
    on_time = learned(config).decide(observe(2, cpu=70.0, at=0.0, demand=100.0), ahead)  # ready at 45 s
    late = learned(config).decide(observe(2, cpu=70.0, at=0.0, demand=100.0), ahead, now=20.0)  # ready at 65 s
    assert (on_time.predictive, late.predictive) == (2, 5)  # 5: an upper bound of 480/s at 110/s a replica (77%)


def test_a_forecast_of_more_demand_scales_up_before_utilisation_rises() -> None:
    config = PolicyConfig(prediction_weight=1.0)
    decision = learned(config).decide(observe(2, cpu=50.0, at=10), forecast([250.0] * 12, at=10))
    assert (decision.reactive, decision.predictive, decision.desired) == (2, 3, 3)
    assert decision.fallback is None and "forecast peak 250.0/s needs 3" in decision.reason


def test_the_blend_never_goes_below_a_reactive_scale_up() -> None:
    config = PolicyConfig(prediction_weight=1.0)
    decision = learned(config).decide(observe(2, cpu=140.0, at=10), forecast([50.0] * 12, at=10))
    assert (decision.reactive, decision.predictive, decision.desired) == (4, 1, 4)


def test_a_forecast_above_both_counts_is_taken_in_full() -> None:
    config = PolicyConfig(prediction_weight=0.3)
    decision = learned(config).decide(observe(2, cpu=50.0, at=10), forecast([1000.0] * 12, at=10, spread=0.0))
    assert (decision.reactive, decision.predictive, decision.blended) == (2, 10, 10)


def test_a_forecast_of_less_demand_is_blended_by_the_weight() -> None:
    config = PolicyConfig(prediction_weight=0.3)
    decision = learned(config).decide(observe(6, cpu=50.0, at=10), forecast([150.0] * 12, at=10))
    assert (decision.reactive, decision.predictive, decision.blended) == (6, 2, 5)  # ceil(0.3 x 2 + 0.7 x 6)


def test_a_wide_band_buys_headroom_up_to_the_tolerance_edge() -> None:
    policy = learned(PolicyConfig(band_scale=2.0))
    decision = policy.decide(observe(2, cpu=50.0, at=10), forecast([200.0] * 12, at=10, spread=0.3))
    # the p50 200/s needs 2 at 70%; its upper bound 200 + 2 x 60 = 320/s needs 3 at 77% (110/s a replica)
    assert (decision.predictive, decision.desired) == (3, 3)
    assert decision.forecast_peak == pytest.approx(200.0) and decision.forecast_upper == pytest.approx(320.0)
    assert "forecast peak 200.0/s needs 2 at 70%, its upper bound 320.0/s needs 3 at 77%" in decision.reason


def test_a_narrow_band_runs_close_to_the_target() -> None:
    decision = learned().decide(observe(2, cpu=50.0, at=10), forecast([200.0] * 12, at=10, spread=0.02))
    assert (decision.predictive, decision.desired) == (2, 2)  # 208/s at 77% fits 2 replicas


def test_the_demand_served_now_is_never_planned_away() -> None:
    decision = learned().decide(observe(5, cpu=80.0, at=10, demand=400.0), forecast([100.0] * 12, at=10))
    assert decision.predictive == 4  # the forecast says 100/s, but 400/s is served now: 4 at 70%
    assert "demand served now 400.0/s needs 4 at 70%" in decision.reason


def test_a_forecast_of_less_demand_scales_down_within_the_hpa_band() -> None:
    policy = learned(PolicyConfig(prediction_weight=1.0))
    decision = policy.decide(observe(6, cpu=50.0, at=10), forecast([150.0] * 12, at=10))
    assert (decision.reactive, decision.predictive, decision.desired) == (6, 2, 2)  # the HPA keeps 6 at 50%


def test_a_band_wide_against_almost_no_demand_is_still_used() -> None:
    # p50 5/s, band 15/s: three times the p50, but less than twice one replica's 100/s
    view = ForecastView(10.0, 15.0, p10=(0.0,) * 12, p50=(5.0,) * 12, p90=(15.0,) * 12)
    decision = learned().decide(observe(2, cpu=5.0, at=10), view)
    assert (decision.fallback, decision.predictive) == (None, 1)


@pytest.mark.parametrize(
    ("view", "fallback"),
    [
        (None, "no forecast"),
        (forecast([250.0] * 12, at=10, spread=1.5), "forecast interval too wide"),
    ],
)
def test_without_a_usable_forecast_the_decision_is_reactive(view: ForecastView | None, fallback: str) -> None:
    decision = learned(PolicyConfig(prediction_weight=1.0)).decide(observe(2, cpu=50.0, at=10), view)
    assert (decision.desired, decision.predictive, decision.fallback) == (2, None, fallback)
    assert f"reactive only ({fallback})" in decision.reason


def test_an_unlearned_capacity_falls_back() -> None:
    policy = ServicePolicy("svc", CONFIG)
    decision = policy.decide(observe(2, cpu=50.0, at=10), forecast([250.0] * 12, at=10))
    assert decision.fallback == "capacity per replica not learned yet"


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    policy = ServicePolicy("svc", PolicyConfig(stabilization_s=300.0))
    assert policy.decide(observe(6, cpu=70.0, at=0), None).desired == 6
    assert policy.decide(observe(6, cpu=10.0, at=100), None).desired == 6  # 6 was asked for within 300 s
    assert policy.decide(observe(6, cpu=10.0, at=301), None).desired == 1  # ceil(6 x 10 / 70)


def test_rate_limits_and_bounds() -> None:
    config = PolicyConfig(max_replicas=20, scale_up_pods=4, scale_up_percent=100.0)
    assert ServicePolicy("svc", config).decide(observe(2, cpu=700.0), None).desired == 6  # +4 beats +100%
    assert ServicePolicy("svc", config).decide(observe(8, cpu=700.0), None).desired == 16  # +100% beats +4
    capped = PolicyConfig(max_replicas=5)
    assert ServicePolicy("svc", capped).decide(observe(4, cpu=140.0), None).desired == 5
    floored = PolicyConfig(min_replicas=2, stabilization_s=0.0)
    assert ServicePolicy("svc", floored).decide(observe(4, cpu=1.0), None).desired == 2


def test_the_start_up_time_sets_the_lead_time() -> None:
    policy = ServicePolicy("svc", CONFIG, startup_s=30.0)
    policy.record_startup(100.0)
    assert policy.startup_s == pytest.approx(0.7 * 30 + 0.3 * 100)
    assert policy.decide(observe(2, cpu=50.0), None).lead_time_s == pytest.approx(policy.startup_s + 15.0)


def test_demand_history_averages_each_step_and_carries_gaps() -> None:
    history = DemandHistory(step_s=10.0)
    for at, demand in [(5, 10.0), (10, 20.0), (17, 30.0), (40, 40.0)]:
        history.add(at, demand)
    # [0,10): 10, its step centred on the first sample; [10,20): mean 25; [20,30) and [30,40): empty, carried
    assert list(history.points) == [10.0, 25.0, 25.0, 25.0]
    assert history.step_end == 40.0
    assert history.last(2) == [25.0, 25.0] and history.last(5) is None
    history.backfill([1.0, 2.0])
    assert list(history.points) == [1.0, 2.0, 10.0, 25.0, 25.0, 25.0]


def test_one_sample_a_step_sits_in_the_middle_of_its_step() -> None:
    """A step's mean is dated at its middle: with one sample a step, the sample must be there too."""
    history = DemandHistory(step_s=0.5)
    for tick in range(4):
        history.add(100.0 + 0.5 * tick, float(tick))
    assert list(history.points) == [0.0, 1.0, 2.0] and history.step_end == 101.25


def test_a_weight_of_zero_leaves_the_forecast_out() -> None:
    decision = learned(PolicyConfig(prediction_weight=0.0)).decide(
        observe(2, cpu=50.0, at=10), forecast([1000.0] * 12, at=10)
    )
    assert (decision.predictive, decision.desired) == (11, 2)  # upper bound 1000 + 2 x 100 = 1200/s at 77%
    assert "predictionWeight 0: the forecast is left out" in decision.reason


def test_the_targets_own_bounds_win_over_the_policys() -> None:
    """The fleet or the Deployment refuses a count outside its own min/max: the decision stays within them."""
    policy = ServicePolicy("svc", PolicyConfig(min_replicas=1, max_replicas=10))
    quiet = Observation(at=0.0, replicas=4, cpu_utilization=5.0, min_replicas=4, max_replicas=6)
    assert policy.decide(quiet, None).desired == 4
    busy = Observation(at=1.0, replicas=4, cpu_utilization=300.0, min_replicas=4, max_replicas=6)
    assert policy.decide(busy, None).desired == 6


@pytest.mark.parametrize(
    ("target_min", "target_max", "allowed"),
    [
        (None, None, (1, 10)),  # the policy's
        (4, 6, (4, 6)),  # narrower: the target's
        (None, 20, (1, 10)),  # wider: the policy's maximum still holds
        (12, 20, (12, 12)),  # the target's minimum over the policy's maximum: the target refuses less
    ],
)
def test_the_replicas_allowed_are_the_policys_within_the_targets(
    target_min: int | None, target_max: int | None, allowed: tuple[int, int]
) -> None:
    config = PolicyConfig(min_replicas=1, max_replicas=10)
    observation = Observation(at=0.0, replicas=2, min_replicas=target_min, max_replicas=target_max)
    assert replica_bounds(config, observation) == allowed
    busy = ServicePolicy("svc", config).decide(replace(observation, cpu_utilization=900.0), None).desired
    quiet = ServicePolicy("svc", config).decide(replace(observation, cpu_utilization=0.0), None).desired
    assert allowed[0] <= quiet <= busy <= allowed[1]


def test_steps_read_back_from_prometheus_are_contiguous() -> None:
    first = datetime(2026, 1, 5, tzinfo=UTC)
    at = [first + timedelta(seconds=300 * index) for index in range(6)]
    points = [(at[1], 4.0), (at[2], math.nan), (at[4], 6.0), (at[5] + timedelta(seconds=3), 7.0)]
    # nothing before the first value; a gap or a NaN repeats the value before it; a stamp a little off still counts
    assert contiguous_steps(points, first, 300.0, 6) == [4.0, 4.0, 4.0, 6.0, 7.0]
    assert contiguous_steps(points, first, 300.0, 3) == [4.0, 4.0]  # only the steps asked for
    assert contiguous_steps([], first, 300.0, 6) == []
