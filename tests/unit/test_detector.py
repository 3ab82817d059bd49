"""The detector: scores in [0, 1], causal (the past never depends on the future), deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.detector import Detector, DetectorConfig, phase_distances, shape_z, unseen_z
from training.detector_fit import fit_detector


def series(n: int = 1500, seed: int = 0) -> np.ndarray:
    steps = np.arange(n)
    return 50 + 10 * np.sin(2 * np.pi * steps / 288) + np.random.default_rng(seed).normal(0, 1, n)


def trained() -> Detector:
    config = DetectorConfig(epochs=3)
    detector, metrics = fit_detector([series(seed=1), series(seed=2)], config, progress=False)
    assert np.isfinite(list(metrics.values())).all()
    return detector


def test_scores_are_causal_bounded_and_deterministic(tmp_path: Path) -> None:
    detector = trained()
    values = series(seed=3)
    scores = detector.score(values)
    assert scores.shape == values.shape and np.all((scores >= 0) & (scores <= 1))
    changed = values.copy()
    changed[1000:] += 500.0  # the future changes; no score before it may change
    np.testing.assert_array_equal(detector.score(changed)[:1000], scores[:1000])
    np.testing.assert_array_equal(trained().score(values), scores)
    detector.save(tmp_path / "d")
    np.testing.assert_array_equal(Detector.load(tmp_path / "d").score(values), scores)


def test_a_level_shift_scores_higher_than_normal_noise() -> None:
    detector = trained()
    values = series(seed=4)
    values[1200:] += 80.0
    scores = detector.score(values)
    assert scores[1200:1210].max() > np.quantile(scores[600:1190], 0.99)


def test_a_changed_daily_shape_raises_the_shape_test() -> None:
    values = series(n=2016, seed=5)
    values[1700:1800] = values[1700]  # one day's values stop following the daily curve
    z = shape_z(values, DetectorConfig())
    assert z[1700:1800].max() > 2 * z[600:1690].max()


def test_a_spike_that_recurs_every_day_is_explained_by_earlier_seasons() -> None:
    config = DetectorConfig()
    values = series(n=2016, seed=6)
    daily = [300, 590, 875, 1166, 1452, 1740]  # the same hour of every day, give or take
    values[daily] += 40.0
    values[1600] += 40.0  # a spike at an hour that has never had one
    closest = phase_distances(values, config.season, config.seasons, config.phase_tolerance).min(axis=1)
    assert closest[daily[1:]].max() < 5.0 < 30.0 < closest[1600]
    z = unseen_z(values, config)
    assert np.isinf(z[: config.season - config.phase_tolerance]).all()  # no season to explain it yet
    assert np.isfinite(z[config.season :]).all()


def test_a_series_shorter_than_a_season_scores_in_range() -> None:
    scores = trained().score(series(n=200, seed=7))
    assert np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores <= 1))
