"""The forecaster: deterministic, ordered quantiles, scale-free, and no look-ahead."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.forecaster import Forecaster, ForecasterConfig
from training.forecaster_fit import fit_forecaster

CONFIG = ForecasterConfig(context=24, horizon=4, hidden=16, layers=1, epochs=3, batch_size=64, seed=3)


def data(n: int = 400) -> tuple[list[np.ndarray], list[np.ndarray]]:
    steps = np.arange(n)
    stamps = np.datetime64("2024-01-01", "ns") + steps * np.timedelta64(5, "m")
    values = [
        10 + 5 * np.sin(2 * np.pi * steps / 24) + np.random.default_rng(seed).normal(0, 0.3, n) for seed in (1, 2)
    ]
    return values, [stamps, stamps]


def test_training_is_deterministic_for_a_seed() -> None:
    values, stamps = data()
    first, _ = fit_forecaster(values, stamps, [300, 300], CONFIG, progress=False)
    second, _ = fit_forecaster(values, stamps, [300, 300], CONFIG, progress=False)
    contexts = np.stack([values[0][276:300]])
    np.testing.assert_array_equal(first.predict(contexts, stamps[0][[299]]), second.predict(contexts, stamps[0][[299]]))


def test_quantiles_are_ordered_and_follow_the_units(tmp_path: Path) -> None:
    values, stamps = data()
    model, metrics = fit_forecaster(values, stamps, [300, 300], CONFIG, progress=False)
    assert metrics["train_windows"] > 0 and np.isfinite(metrics["validation_pinball"])
    contexts = np.stack([values[0][276:300], 1000 * values[0][276:300]])
    forecast = model.predict(contexts, stamps[0][[299, 299]])
    assert forecast.shape == (2, 3, 4)
    assert np.all(forecast[:, 0] <= forecast[:, 1]) and np.all(forecast[:, 1] <= forecast[:, 2])
    np.testing.assert_allclose(forecast[1], 1000 * forecast[0], rtol=1e-4)  # scale-free
    model.save(tmp_path / "m")
    np.testing.assert_array_equal(Forecaster.load(tmp_path / "m").predict(contexts, stamps[0][[299, 299]]), forecast)


def test_training_never_reads_past_the_end_it_is_given() -> None:
    values, stamps = data()
    changed = [series.copy() for series in values]
    for series in changed:
        series[300:] = 1e6  # the held-out tail: must not influence training
    first, _ = fit_forecaster(values, stamps, [300, 300], CONFIG, progress=False)
    second, _ = fit_forecaster(changed, stamps, [300, 300], CONFIG, progress=False)
    contexts = np.stack([values[1][200:224]])
    np.testing.assert_array_equal(first.predict(contexts, stamps[1][[223]]), second.predict(contexts, stamps[1][[223]]))
