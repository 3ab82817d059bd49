"""Forecast metrics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import coverage, mase, seasonal_scale, smape, wape


def test_seasonal_scale_uses_the_season_lag() -> None:
    history = np.array([1.0, 2, 3, 4, 2, 3, 4, 6, 3])  # season 2 needs > 4 points: lag 2 used
    # |3-1| |4-2| |2-3| |3-4| |4-2| |6-3| |3-4| = 2 2 1 1 2 3 1 -> 12 / 7
    assert seasonal_scale(history, 2) == pytest.approx(12 / 7)


def test_seasonal_scale_falls_back_to_lag_one_and_is_never_zero() -> None:
    assert seasonal_scale(np.array([1.0, 3, 2]), 288) == pytest.approx((2 + 1) / 2)
    assert seasonal_scale(np.array([5.0, 5, 5, 5]), 1) > 0


def test_mase() -> None:
    actual, predicted = np.array([[1.0, 2], [3, 4]]), np.array([[2.0, 2], [1, 4]])
    # mean |e| = (1 + 0 + 2 + 0) / 4 = 0.75; scale 0.5 -> 1.5
    assert mase(actual, predicted, 0.5) == pytest.approx(1.5)


def test_smape() -> None:
    # 2|100-110|/(100+110) = 0.095238..., 2|0-0|/0 -> 0, 2|50-25|/75 = 0.6667
    value = smape(np.array([100.0, 0, 50]), np.array([110.0, 0, 25]))
    assert value == pytest.approx(100 * (20 / 210 + 0 + 50 / 75) / 3)


def test_wape() -> None:
    # (10 + 5) / (100 + 50) = 10 %
    assert wape(np.array([100.0, 50]), np.array([110.0, 45])) == pytest.approx(10.0)
    assert wape(np.zeros(3), np.zeros(3)) == 0.0


def test_coverage() -> None:
    actual = np.array([1.0, 5, 9, 3])
    assert coverage(actual, np.array([0.0, 6, 8, 3]), np.array([2.0, 7, 10, 3])) == pytest.approx(0.75)
