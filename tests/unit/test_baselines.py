"""Code and model checks for the rolling-origin forecasting baselines (small synthetic series)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from training.baselines import (
    BASELINES,
    daily_profile,
    mstl_seasons,
    origins,
    rolling_origin_baselines,
)

M = 24  # steps per "day" in these tests
H = 6


def _seasonal_series(n: int = 20 * M, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 10.0 + 3.0 * np.sin(2 * np.pi * t / M) + rng.normal(0.0, 0.1, n)


def _mae(y: np.ndarray, test_start: int, forecasts: np.ndarray) -> float:
    cut = origins(len(y), test_start, H)
    actual = y[cut[:, None] + np.arange(H)[None, :]]
    return float(np.mean(np.abs(forecasts - actual)))


def test_origins_cut_the_test_region_into_whole_horizons() -> None:
    np.testing.assert_array_equal(origins(104, 80, 12), [80, 92])
    np.testing.assert_array_equal(origins(103, 80, 12), [80])
    np.testing.assert_array_equal(origins(92, 80, 12), [80])
    assert origins(91, 80, 12).size == 0
    assert origins(10, 10, 1).size == 0
    assert origins(104, 80, 12).dtype == np.int64


@pytest.mark.parametrize(("n", "test_start", "horizon"), [(10, 0, 1), (10, 11, 1), (10, 5, 0)])
def test_origins_reject_impossible_splits(n: int, test_start: int, horizon: int) -> None:
    with pytest.raises(ValueError):
        origins(n, test_start, horizon)


def test_naive_and_seasonal_naive_by_hand() -> None:
    # Season 4, horizon 6 > season: the seasonal naive repeats the last season.
    first = np.arange(32, dtype=np.float64)
    second = 100.0 + np.arange(12, dtype=np.float64)
    result = rolling_origin_baselines([first, second], [20, 5], 6, 4, names=("naive", "seasonal_naive"))

    naive, seasonal = result["naive"], result["seasonal_naive"]
    np.testing.assert_array_equal(naive[0], [[19.0] * 6, [25.0] * 6])
    np.testing.assert_array_equal(seasonal[0], [[16, 17, 18, 19, 16, 17], [22, 23, 24, 25, 22, 23]])
    np.testing.assert_array_equal(naive[1], [[104.0] * 6])  # origin 5, y[4] = 104
    np.testing.assert_array_equal(seasonal[1], [[101, 102, 103, 104, 101, 102]])


def test_shapes_follow_the_origins_including_none() -> None:
    y = _seasonal_series(6 * M)
    result = rolling_origin_baselines([y, y[: 4 * M + 3]], [4 * M, 4 * M], H, M)
    assert set(result) == set(BASELINES)
    for forecasts in result.values():
        assert forecasts[0].shape == (len(origins(len(y), 4 * M, H)), H)
        assert forecasts[1].shape == (0, H)


def test_daily_profile_is_the_mean_per_position() -> None:
    np.testing.assert_allclose(daily_profile(np.arange(1.0, 8.0), 3), [4.0, 3.5, 4.5])
    # Positions never seen in a short training part take the overall mean.
    np.testing.assert_allclose(daily_profile(np.array([1.0, 2.0]), 4), [1.0, 2.0, 1.5, 1.5])


@pytest.mark.parametrize("name", BASELINES)
def test_no_look_ahead(name: str) -> None:
    y = _seasonal_series()
    test_start = 16 * M + 5
    cut = origins(len(y), test_start, H)
    reference = rolling_origin_baselines([y], [test_start], H, M, names=(name,))[name][0]
    rng = np.random.default_rng(1)
    for k in (0, len(cut) // 2, len(cut) - 1):
        changed = y.copy()
        changed[cut[k] :] += 50.0 + rng.normal(0.0, 5.0, len(y) - cut[k])
        forecasts = rolling_origin_baselines([changed], [test_start], H, M, names=(name,))[name][0]
        # Forecasts from this origin and every earlier one saw none of the change...
        np.testing.assert_array_equal(forecasts[: k + 1], reference[: k + 1])
        if k == 0:  # ...and the change does reach the later ones.
            assert not np.array_equal(forecasts, reference)


@pytest.mark.parametrize("test_start", [16 * M, 10 * M])  # with and without the weekly season
def test_fitted_baselines_beat_naive_on_a_clean_seasonal_series(
    test_start: int, caplog: pytest.LogCaptureFixture
) -> None:
    y = _seasonal_series()
    with caplog.at_level(logging.WARNING, logger="training.baselines"):
        result = rolling_origin_baselines([y], [test_start], H, M)
    assert not [r for r in caplog.records if "failed" in r.getMessage()]
    naive_mae = _mae(y, test_start, result["naive"][0])
    for name in ("autoets", "mstl"):
        forecasts = result[name][0]
        assert forecasts.shape == (len(origins(len(y), test_start, H)), H)
        assert np.all(np.isfinite(forecasts))
        assert _mae(y, test_start, forecasts) < 0.3 * naive_mae, name


def test_mstl_drops_the_weekly_season_under_two_weeks_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert mstl_seasons(14 * M, M) == [M, 7 * M]
    assert mstl_seasons(14 * M - 1, M) == [M]
    y = _seasonal_series()
    with caplog.at_level(logging.WARNING, logger="training.baselines"):
        rolling_origin_baselines([y, y], [16 * M, 10 * M], H, M, names=("mstl",))
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1
    assert "1 of 2 series" in messages[0] and "daily season only" in messages[0]


@pytest.mark.parametrize("value", [0.0, 5.0])
def test_a_constant_series_does_not_crash(value: float) -> None:
    y = np.full(12 * M, value)
    result = rolling_origin_baselines([y], [10 * M], H, M)
    for name, forecasts in result.items():
        assert forecasts[0].shape == (len(origins(len(y), 10 * M, H)), H), name
        np.testing.assert_allclose(forecasts[0], value, atol=1e-6, err_msg=name)


def test_a_model_that_cannot_fit_falls_back_to_naive(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Under two seasons of training data: STL cannot decompose it.
    y = _seasonal_series(3 * M)
    with caplog.at_level(logging.WARNING, logger="training.baselines"):
        result = rolling_origin_baselines([y], [M + 5], H, M, names=("naive", "mstl"))
    np.testing.assert_array_equal(result["mstl"][0], result["naive"][0])
    assert any("mstl failed on series 0" in r.getMessage() for r in caplog.records)


def test_bad_input_is_refused() -> None:
    y = _seasonal_series(4 * M)
    with pytest.raises(ValueError, match="unknown baselines"):
        rolling_origin_baselines([y], [2 * M], H, M, names=("prophet",))
    with pytest.raises(ValueError, match="test starts"):
        rolling_origin_baselines([y, y], [2 * M], H, M)
    with_gap = y.copy()
    with_gap[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        rolling_origin_baselines([with_gap], [2 * M], H, M, names=("naive",))
