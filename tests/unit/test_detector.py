"""The detector: scores in [0, 1], causal (the past never depends on the future), deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.detector import Detector, DetectorConfig
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
