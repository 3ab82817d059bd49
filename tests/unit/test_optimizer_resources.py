"""Right-sizing: percentiles, margin, the out-of-memory rule, minimums, forecasts and the usage window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from actuators.optimizer.resources import (
    MIN_CPU_CORES,
    MIN_MEMORY_BYTES,
    UnsafeResources,
    check_memory_safe,
    percentile,
    recommend_resources,
    reversible_change,
    round_cpu,
    round_memory,
)
from actuators.optimizer.usage import ReplicaSample, UsageHistory, UsageWindow, collect_usage
from tmsops.errors import PermanentError
from tmsops.settings import ResourceOptimization
from tmsops.targets.model import Replica, ReplicaUsage, Resources, ServiceStatus, ServiceUsage

MI = 2**20
T0 = datetime(2025, 1, 1, tzinfo=UTC)
POLICY = ResourceOptimization(cpu_percentile=95, memory_percentile=99, margin=0.15)
CURRENT = Resources(cpu_request=0.25, memory_request=128 * MI, memory_limit=512 * MI)


def window(cpu: list[float], memory: list[int], *, demand: list[float] | None = None, restarts: int = 0) -> UsageWindow:
    samples = [
        ReplicaSample(at=T0 + timedelta(seconds=index), replica=f"svc-{index % 2}", cpu_cores=c, memory_bytes=m)
        for index, (c, m) in enumerate(zip(cpu, memory, strict=True))
    ]
    return UsageWindow(service="svc", source="sampler", samples=samples, demand=demand or [], restarts=restarts)


def steady(cpu: float, memory: int, count: int = 100, **extra: object) -> UsageWindow:
    return window([cpu] * count, [memory] * count, **extra)  # type: ignore[arg-type]


def test_percentile_interpolates_between_closest_ranks_like_numpy() -> None:
    values = [float(value) for value in range(10, 0, -1)]
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 95) == pytest.approx(9.55)
    assert (percentile(values, 0), percentile(values, 100)) == (1.0, 10.0)
    assert percentile([3.0], 99) == 3.0


def test_cpu_request_is_the_percentile_plus_margin_rounded_up_to_5m_with_no_cpu_limit() -> None:
    cpu = [index / 100 for index in range(1, 101)]  # p95 = 0.9505 cores
    recommendation = recommend_resources(window(cpu, [100 * MI] * 100), CURRENT, 2, POLICY)
    assert recommendation.enough_data
    assert recommendation.usage.cpu_cores == pytest.approx(0.9505)
    assert recommendation.usage.cpu_percentile == 95
    assert recommendation.recommended is not None
    assert recommendation.recommended.cpu_request == pytest.approx(1.095)  # 0.9505 * 1.15 = 1.0931 -> 1095m
    assert recommendation.recommended.cpu_limit is None
    assert "no CPU limit" in recommendation.reason


def test_memory_request_equals_the_limit_at_the_larger_of_percentile_and_max_plus_margin() -> None:
    memory = [100 * MI] * 99 + [200 * MI]  # p99 interpolates to 101Mi; the max is 200Mi
    recommendation = recommend_resources(window([0.1] * 100, memory), CURRENT, 1, POLICY)
    assert recommendation.usage.memory_bytes == 101 * MI
    assert recommendation.usage.memory_bytes_max == 200 * MI
    assert recommendation.recommended is not None
    assert recommendation.recommended.memory_request == recommendation.recommended.memory_limit == 230 * MI
    assert not recommendation.out_of_memory


def test_restarts_in_the_window_raise_memory_to_one_and_a_half_times_the_last_limit() -> None:
    current = Resources(cpu_request=0.25, memory_request=256 * MI, memory_limit=256 * MI)
    recommendation = recommend_resources(steady(0.1, 100 * MI, restarts=2), current, 1, POLICY)
    assert recommendation.out_of_memory
    assert recommendation.recommended is not None
    assert recommendation.recommended.memory_limit == 384 * MI
    assert "2 replica restart(s)" in recommendation.reason and "1.5 x the last limit" in recommendation.reason


def test_memory_reaching_the_limit_is_out_of_memory_too() -> None:
    current = Resources(memory_request=128 * MI, memory_limit=128 * MI)
    recommendation = recommend_resources(steady(0.1, 125 * MI), current, 1, POLICY)
    assert recommendation.out_of_memory
    assert recommendation.recommended is not None
    assert recommendation.recommended.memory_limit == 192 * MI  # 1.5 x 128Mi beats 125Mi x 1.15
    assert "memory reached 98% of the 128Mi limit" in recommendation.reason


def test_tiny_usage_gets_the_minimums() -> None:
    recommendation = recommend_resources(steady(0.0004, 5 * MI), CURRENT, 1, POLICY)
    assert recommendation.recommended is not None
    assert recommendation.recommended.cpu_request == MIN_CPU_CORES
    assert recommendation.recommended.memory_request == MIN_MEMORY_BYTES
    assert "raised to the minimum 10m" in recommendation.reason
    assert "raised to the minimum 32Mi" in recommendation.reason


def test_rounding_to_sensible_quantities() -> None:
    assert round_cpu(0.25) == 0.25
    assert round_cpu(0.2500000001) == 0.25
    assert round_cpu(0.251) == 0.255
    assert round_cpu(0.0) == MIN_CPU_CORES
    assert round_memory(100 * MI + 1) == 101 * MI
    assert round_memory(1) == MIN_MEMORY_BYTES


def test_too_few_samples_is_a_not_enough_data_answer() -> None:
    recommendation = recommend_resources(steady(0.1, 100 * MI, count=5), CURRENT, 1, POLICY, min_samples=20)
    assert not recommendation.enough_data
    assert recommendation.recommended is None and recommendation.savings is None
    assert recommendation.reason.startswith("Not enough data: 5 usage samples of svc (sampler), 20 needed")


def test_the_forecast_peak_scales_cpu_up_but_never_down_and_is_capped() -> None:
    history = steady(0.2, 100 * MI, demand=[5.0, 10.0, 8.0])
    plain = recommend_resources(history, CURRENT, 1, POLICY)
    doubled = recommend_resources(history, CURRENT, 1, POLICY, predicted_peak_rps=20.0)
    lower = recommend_resources(history, CURRENT, 1, POLICY, predicted_peak_rps=5.0)
    huge = recommend_resources(history, CURRENT, 1, POLICY, predicted_peak_rps=1000.0)
    assert plain.recommended and doubled.recommended and lower.recommended and huge.recommended
    assert plain.recommended.cpu_request == pytest.approx(0.23)  # 0.2 * 1.15
    assert doubled.forecast_factor == 2.0 and doubled.recommended.cpu_request == pytest.approx(0.46)
    assert lower.forecast_factor == 1.0 and lower.recommended.cpu_request == plain.recommended.cpu_request
    assert huge.forecast_factor == 4.0 and "capped at x4" in huge.reason
    assert doubled.recommended.memory_request == plain.recommended.memory_request


def test_a_forecast_without_demand_history_is_ignored_and_said_so() -> None:
    recommendation = recommend_resources(steady(0.2, 100 * MI), CURRENT, 1, POLICY, predicted_peak_rps=50.0)
    assert recommendation.forecast_factor is None
    assert "the history holds no demand" in recommendation.reason


def test_a_cpu_limit_already_set_is_kept_at_least_at_the_observed_peak_and_explained() -> None:
    cpu = [0.1] * 99 + [0.5]
    current = CURRENT.model_copy(update={"cpu_limit": 1.0})
    recommendation = recommend_resources(window(cpu, [100 * MI] * 100), current, 1, POLICY)
    assert recommendation.recommended is not None
    assert recommendation.recommended.cpu_limit == pytest.approx(0.575)  # the 0.5 peak + 15%
    assert "because one is set (1000m)" in recommendation.reason


def test_savings_are_per_replica_differences_times_replicas() -> None:
    recommendation = recommend_resources(steady(0.1, 100 * MI), CURRENT, 3, POLICY)
    assert recommendation.savings is not None
    assert recommendation.savings.cpu_cores == pytest.approx((0.25 - 0.115) * 3)
    assert recommendation.savings.memory_bytes == (128 - 115) * MI * 3
    unset = recommend_resources(steady(0.1, 100 * MI), Resources(), 3, POLICY)
    assert unset.savings is not None and unset.savings.cpu_cores is None and unset.savings.memory_bytes is None


def test_safe_mode_leaves_out_fields_that_could_not_be_undone() -> None:
    change, left_out = reversible_change(
        Resources(cpu_request=0.25, memory_request=128 * MI),
        Resources(cpu_request=0.1, memory_request=64 * MI, memory_limit=64 * MI),
    )
    assert change == Resources(cpu_request=0.1, memory_request=64 * MI)
    assert left_out == ["memory_limit"]


def test_safe_mode_refuses_a_memory_limit_below_the_usage_seen() -> None:
    with pytest.raises(UnsafeResources, match=r"memory limit 64Mi of svc is below .* \(100Mi\)") as refused:
        check_memory_safe("svc", Resources(memory_limit=64 * MI), 100 * MI)
    assert refused.value.http_status == 409
    check_memory_safe("svc", Resources(memory_limit=100 * MI), 100 * MI)
    check_memory_safe("svc", Resources(cpu_request=0.1), 100 * MI)


def usage_at(seconds: float, total: int | None, *replicas: tuple[str, float, int]) -> ServiceUsage:
    return ServiceUsage(
        service="svc",
        at=T0 + timedelta(seconds=seconds),
        replicas=[ReplicaUsage(replica=name, cpu_cores=cpu, memory_bytes=memory) for name, cpu, memory in replicas],
        requests_total=total,
    )


def status_with(**restarts: int) -> ServiceStatus:
    pods = [Replica(id=name, ready=True, restarts=count) for name, count in restarts.items()]
    return ServiceStatus(
        name="svc", replicas=len(pods), ready_replicas=len(pods), min_replicas=1, max_replicas=5, pods=pods
    )


def test_the_usage_history_counts_restarts_and_demand_between_polls() -> None:
    history = UsageHistory("svc")
    history.add(usage_at(0, 100, ("a", 0.1, MI), ("b", 0.2, MI)), status_with(a=0, b=3))
    history.add(usage_at(10, 150, ("a", 0.1, MI), ("b", 0.2, MI)), status_with(a=1, b=3))
    history.add(usage_at(20, 250, ("a", 0.1, MI)), status_with(a=2))
    result = history.window()
    assert len(result.samples) == 5 and result.replicas_seen == 2
    assert result.restarts == 2  # a restarted twice; b's 3 restarts happened before the window
    assert result.demand == [5.0, 10.0]


def test_the_usage_history_is_bounded_by_age_and_by_count() -> None:
    by_age = UsageHistory("svc", keep=timedelta(seconds=30))
    for second in range(0, 100, 10):
        by_age.add(usage_at(second, None, ("a", 0.1, MI)), status_with(a=second // 10))
    assert by_age.window().start == T0 + timedelta(seconds=60)
    assert by_age.window().restarts == 4  # 60, 70, 80 and 90 s: within the last 30 s
    by_count = UsageHistory("svc", max_samples=3)
    for second in range(10):
        by_count.add(usage_at(second, None, ("a", float(second), MI)))
    assert by_count.window().cpu_cores == [7.0, 8.0, 9.0]


@pytest.mark.anyio
async def test_collecting_usage_needs_prometheus_or_a_sampler() -> None:
    with pytest.raises(PermanentError, match="no usage source: configure Prometheus"):
        await collect_usage("svc")
