"""Data checks for the built-in trace generator (the pipeline's default training data)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from training.generate import (
    AFFECTED_METRICS,
    METRICS,
    GeneratorConfig,
    Incident,
    generate_traces,
    plan_incidents,
    probation_length,
)
from training.series import METRIC_KINDS, Series

DEFAULT = GeneratorConfig()
STEPS_PER_DAY = 86_400 // DEFAULT.step_s
SEEDS = (0, 1, 7, 42, 123)


@pytest.fixture(scope="module")
def traces() -> list[Series]:
    return generate_traces(DEFAULT)


@pytest.fixture(scope="module")
def by_key(traces: list[Series]) -> dict[str, Series]:
    return {series.key: series for series in traces}


def _index(series: Series, moment: np.datetime64) -> int:
    return int(np.searchsorted(series.timestamps, moment))


def _autocorrelation(values: np.ndarray, lag: int) -> float:
    return float(np.corrcoef(values[:-lag], values[lag:])[0, 1])


def _weekdays(series: Series) -> np.ndarray:
    return (series.timestamps.astype("datetime64[D]").astype(np.int64) + 3) % 7


def _incidents_by_service(config: GeneratorConfig) -> dict[str, tuple[Incident, ...]]:
    return {service: plan_incidents(config, service) for service in config.services}


# --- shape and determinism ------------------------------------------------------------


def test_same_seed_gives_identical_traces(traces: list[Series]) -> None:
    again = generate_traces(DEFAULT)
    for first, second in zip(traces, again, strict=True):
        assert first.key == second.key
        np.testing.assert_array_equal(first.values, second.values)
        np.testing.assert_array_equal(first.timestamps, second.timestamps)
        assert first.windows == second.windows


def test_another_seed_gives_different_traces(traces: list[Series]) -> None:
    other = generate_traces(replace(DEFAULT, seed=DEFAULT.seed + 1))
    for first, second in zip(traces, other, strict=True):
        assert first.key == second.key
        assert not np.allclose(first.values, second.values)
        assert second.source == f"generator(seed={DEFAULT.seed + 1})"


def test_a_service_does_not_depend_on_the_others(by_key: dict[str, Series]) -> None:
    alone = generate_traces(replace(DEFAULT, services=("inventory",)))
    for series in alone:
        np.testing.assert_array_equal(series.values, by_key[series.key].values)


def test_sixteen_series_with_the_expected_keys_and_fields(traces: list[Series]) -> None:
    expected = [f"{service}/{metric}" for service in DEFAULT.services for metric in METRICS]
    assert [series.key for series in traces] == expected
    for series in traces:
        assert len(series) == DEFAULT.days * STEPS_PER_DAY
        assert series.metric == series.name
        assert series.metric in METRIC_KINDS
        assert series.source == "generator(seed=42)"
        assert series.values.dtype == np.float64


def test_timestamps_are_regular_and_start_on_the_configured_monday(
    traces: list[Series],
) -> None:
    for series in traces:
        assert series.timestamps.dtype == np.dtype("datetime64[ns]")
        assert series.timestamps[0] == np.datetime64(DEFAULT.start, "ns")
        steps = np.diff(series.timestamps)
        assert np.all(steps == np.timedelta64(DEFAULT.step_s, "s"))


def test_other_step_and_length_are_honoured() -> None:
    config = replace(DEFAULT, days=3, step_s=60, services=("orders",), incidents_per_service=1)
    traces = generate_traces(config)
    assert len(traces) == 4
    for series in traces:
        assert len(series) == 3 * 1440
        assert np.all(np.diff(series.timestamps) == np.timedelta64(60, "s"))


@pytest.mark.parametrize(
    "change",
    [
        {"days": 0},
        {"step_s": 0},
        {"days": 1, "step_s": 86_400},
        {"services": ()},
        {"services": ("a", "a")},
        {"incidents_per_service": -1},
    ],
)
def test_invalid_configs_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        generate_traces(replace(DEFAULT, **change))  # type: ignore[arg-type]


def test_too_many_incidents_for_the_length_are_refused() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        generate_traces(replace(DEFAULT, days=1, incidents_per_service=20))


def test_no_incidents_means_no_windows() -> None:
    traces = generate_traces(replace(DEFAULT, incidents_per_service=0))
    assert all(series.windows == () for series in traces)


# --- plausibility ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_values_are_finite_and_within_plausible_bounds(seed: int) -> None:
    bounds = {
        "requests_per_s": (0.0, 1e5),
        "cpu_percent": (0.0, 100.0),
        "memory_bytes": (1e7, 1e11),
        "latency_p95_ms": (1.0, 60_000.0),
    }
    for series in generate_traces(replace(DEFAULT, seed=seed)):
        low, high = bounds[series.metric]
        assert np.all(np.isfinite(series.values)), series.key
        assert series.values.min() >= low, series.key
        assert series.values.max() <= high, series.key
        assert series.values.min() > 0.0 or series.metric == "cpu_percent", series.key


def test_services_differ_in_level(traces: list[Series]) -> None:
    means = [series.values.mean() for series in traces if series.metric == "requests_per_s"]
    assert max(means) > 1.5 * min(means)


# --- patterns --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_requests_have_a_daily_season(seed: int) -> None:
    for series in generate_traces(replace(DEFAULT, seed=seed)):
        if series.metric != "requests_per_s":
            continue
        one_day = _autocorrelation(series.values, STEPS_PER_DAY)
        half_day = _autocorrelation(series.values, STEPS_PER_DAY // 2)
        assert one_day > 0.6, series.key
        assert one_day > half_day + 0.5, series.key


def test_nights_are_quiet_and_daytime_is_busy(traces: list[Series]) -> None:
    for series in traces:
        if series.metric != "requests_per_s":
            continue
        hours = (series.timestamps - series.timestamps.astype("datetime64[D]")) // np.timedelta64(1, "h")
        night = np.median(series.values[(hours >= 2) & (hours < 5)])
        lunch = np.median(series.values[(hours >= 12) & (hours < 14)])
        evening = np.median(series.values[(hours >= 19) & (hours < 21)])
        assert lunch > 2.0 * night, series.key
        assert evening > 2.0 * night, series.key


@pytest.mark.parametrize("seed", SEEDS)
def test_weekends_are_quieter_than_weekdays(seed: int) -> None:
    for series in generate_traces(replace(DEFAULT, seed=seed)):
        if series.metric != "requests_per_s":
            continue
        weekend = _weekdays(series) >= 5
        assert series.values[weekend].mean() < 0.9 * series.values[~weekend].mean(), series.key


def test_cpu_follows_requests_and_latency_follows_cpu(traces: list[Series]) -> None:
    by_service: dict[str, dict[str, np.ndarray]] = {}
    for series in traces:
        by_service.setdefault(series.category, {})[series.metric] = series.values
    for service, values in by_service.items():
        assert np.corrcoef(values["requests_per_s"], values["cpu_percent"])[0, 1] > 0.8, service
        busy = values["cpu_percent"] > np.quantile(values["cpu_percent"], 0.9)
        idle = values["cpu_percent"] < np.quantile(values["cpu_percent"], 0.1)
        assert np.median(values["latency_p95_ms"][busy]) > 1.2 * np.median(values["latency_p95_ms"][idle]), service


def test_memory_has_gc_drops(traces: list[Series]) -> None:
    for series in traces:
        if series.metric != "memory_bytes":
            continue
        relative_steps = np.diff(series.values) / series.values[:-1]
        assert np.sum(relative_steps < -0.04) >= DEFAULT.days, series.key
        assert np.median(relative_steps) > 0.0, series.key


# --- windows -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("count", [1, 2, 4, 6])
def test_windows_lie_after_probation_inside_the_series_and_apart(seed: int, count: int) -> None:
    config = replace(DEFAULT, seed=seed, incidents_per_service=count)
    for series in generate_traces(config):
        probation_end = series.timestamps[probation_length(len(series))]
        previous_end = None
        for start, end in series.windows:
            assert start in series.timestamps and end in series.timestamps
            assert probation_end <= start < end <= series.timestamps[-1], series.key
            if previous_end is not None:
                assert start > previous_end, series.key
            previous_end = end


def test_windows_follow_nab_width_and_centre_on_onsets(
    by_key: dict[str, Series],
) -> None:
    for service, incidents in _incidents_by_service(DEFAULT).items():
        for metric in METRICS:
            series = by_key[f"{service}/{metric}"]
            onsets = [incident.onset for incident in incidents if metric in incident.metrics]
            assert len(series.windows) == len(onsets)
            for (start, end), onset in zip(series.windows, onsets, strict=True):
                first, last = _index(series, start), _index(series, end)
                width = last - first + 1
                assert abs(width - 0.1 * len(series) / len(onsets)) <= 2
                assert (first + last) // 2 == onset


@pytest.mark.parametrize("seed", SEEDS)
def test_incidents_do_not_overlap_and_are_labelled_on_affected_series(
    seed: int,
) -> None:
    config = replace(DEFAULT, seed=seed, incidents_per_service=4)
    for incidents in _incidents_by_service(config).values():
        assert sorted(incident.kind for incident in incidents) == sorted(AFFECTED_METRICS)
        for earlier, later in itertools.pairwise(incidents):
            assert earlier.end < later.onset


# --- incidents change the data --------------------------------------------------------------


def _span_and_day_before(values: np.ndarray, incident: Incident) -> tuple[np.ndarray, np.ndarray]:
    span = slice(incident.onset, incident.end)
    before = slice(incident.onset - STEPS_PER_DAY, incident.end - STEPS_PER_DAY)
    return values[span], values[before]


def _incident_cases(kind: str) -> list[tuple[GeneratorConfig, str, Incident]]:
    """Incidents of ``kind`` over several seeds whose previous day is free of incidents."""
    cases = []
    for seed in SEEDS:
        config = replace(DEFAULT, seed=seed, incidents_per_service=4)
        for service, incidents in _incidents_by_service(config).items():
            for incident in incidents:
                day_before = range(incident.onset - STEPS_PER_DAY, incident.end - STEPS_PER_DAY)
                quiet = all(other.end <= day_before.start or other.onset >= day_before.stop for other in incidents)
                if incident.kind == kind and quiet:
                    cases.append((config, service, incident))
    assert cases, f"no {kind} incident with a quiet previous day"
    return cases


def _values(config: GeneratorConfig, service: str, metric: str) -> np.ndarray:
    traces = generate_traces(replace(config, services=(service,)))
    return next(series.values for series in traces if series.metric == metric)


def test_latency_regression_raises_latency_against_the_day_before() -> None:
    for config, service, incident in _incident_cases("latency_regression"):
        during, before = _span_and_day_before(_values(config, service, "latency_p95_ms"), incident)
        assert np.median(during) > 1.5 * np.median(before), (service, incident)


def test_cpu_runaway_drives_cpu_near_saturation() -> None:
    for config, service, incident in _incident_cases("cpu_runaway"):
        during, before = _span_and_day_before(_values(config, service, "cpu_percent"), incident)
        assert during[-1] > 85.0, (service, incident)
        assert during.mean() > before.mean() + 15.0, (service, incident)


def test_traffic_drop_cuts_requests() -> None:
    for config, service, incident in _incident_cases("traffic_drop"):
        during, before = _span_and_day_before(_values(config, service, "requests_per_s"), incident)
        assert during.mean() < 0.4 * before.mean(), (service, incident)


def test_memory_leak_ramps_up_then_drops_at_restart() -> None:
    for config, service, incident in _incident_cases("memory_leak"):
        memory = _values(config, service, "memory_bytes")
        peak, after = memory[incident.end - 1], memory[incident.end]
        assert peak > 1.25 * np.median(memory), (service, incident)
        assert after < 0.85 * peak, (service, incident)


def _daytime_excursions(series: Series) -> np.ndarray:
    """Daytime points at over 1.4x both the day before and the day after (same time of day)."""
    values = series.values
    inner = slice(STEPS_PER_DAY, len(series) - STEPS_PER_DAY)
    reference = np.maximum(values[: -2 * STEPS_PER_DAY], values[2 * STEPS_PER_DAY :])
    hours = (series.timestamps - series.timestamps.astype("datetime64[D]")) // np.timedelta64(1, "h")
    daytime = (hours[inner] >= 9) & (hours[inner] < 22)
    return (values[inner] > 1.4 * reference) & daytime


def _run_lengths(flags: np.ndarray) -> np.ndarray:
    edges = np.diff(np.concatenate(([0], flags.astype(np.int64), [0])))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def test_traffic_bursts_are_short_and_unlabelled() -> None:
    runs: list[int] = []
    for seed in SEEDS:
        for series in generate_traces(replace(DEFAULT, seed=seed, incidents_per_service=0)):
            if series.metric == "requests_per_s":
                runs.extend(_run_lengths(_daytime_excursions(series)).tolist())
    assert len(runs) >= 10
    assert max(runs) <= 6
