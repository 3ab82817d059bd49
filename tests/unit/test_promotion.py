"""The promotion gate: only a candidate that beats every baseline and the champion moves the alias."""

from __future__ import annotations

from training.register import detector_decision, flat, forecaster_decision

BASELINES = ["naive", "seasonal_naive", "autoets", "mstl"]


def forecast(champion: float, **baselines: float) -> dict[str, dict[str, float]]:
    scores = {"naive": 0.8, "seasonal_naive": 1.0, "autoets": 0.9, "mstl": 0.95, **baselines}
    return {"champion": {"mase": champion}, **{name: {"mase": value} for name, value in scores.items()}}


def test_better_than_everything_is_promoted() -> None:
    promoted, reason = forecaster_decision(forecast(0.5), 0.6, BASELINES)
    assert promoted and "beats every baseline" in reason and "0.6000" in reason


def test_worse_than_the_champion_is_not_promoted() -> None:
    promoted, reason = forecaster_decision(forecast(0.5), 0.45, BASELINES)
    assert not promoted and "current champion (0.4500)" in reason


def test_worse_than_a_baseline_is_not_promoted() -> None:
    promoted, reason = forecaster_decision(forecast(0.5, naive=0.49), None, BASELINES)
    assert not promoted and "baseline naive" in reason


def test_a_tie_is_not_an_improvement() -> None:
    assert not forecaster_decision(forecast(0.5), 0.5, BASELINES)[0]


def anomaly(detector: float, baseline: float) -> dict[str, dict[str, dict[str, float]]]:
    return {"detector": {"standard": {"score": detector}}, "windowed_gaussian": {"standard": {"score": baseline}}}


def test_detector_gate() -> None:
    assert detector_decision(anomaly(60, 40), None)[0]
    assert detector_decision(anomaly(60, 40), 55)[0]
    assert not detector_decision(anomaly(60, 40), 61)[0]
    assert not detector_decision(anomaly(39, 40), None)[0]


def test_flat_keys() -> None:
    assert flat("", {"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == {"a.b": 1, "d": "x"}
