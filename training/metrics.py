"""Forecast accuracy metrics. Every function takes arrays of matching shape."""

from __future__ import annotations

import numpy as np


def seasonal_scale(history: np.ndarray, season: int) -> float:
    """In-sample MAE of the seasonal naive forecast (lag ``season``): MASE's denominator.

    Falls back to lag 1 when the history is shorter than two seasons, and to a tiny
    positive number for a constant history so that MASE stays finite.
    """
    lag = season if len(history) > 2 * season else 1
    if len(history) <= lag:
        raise ValueError(f"history of {len(history)} points is too short for a lag of {lag}")
    scale = float(np.mean(np.abs(history[lag:] - history[:-lag])))
    return scale if scale > 0 else 1e-8


def mase(actual: np.ndarray, predicted: np.ndarray, scale: float) -> float:
    return float(np.mean(np.abs(actual - predicted)) / scale)


def smape(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Symmetric MAPE in percent, 0 where both are 0."""
    denominator = np.abs(actual) + np.abs(predicted)
    ratio = np.divide(
        2 * np.abs(actual - predicted), denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    return float(100 * np.mean(ratio))


def wape(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Weighted absolute percentage error: sum |error| / sum |actual|, in percent."""
    total = float(np.sum(np.abs(actual)))
    error = float(np.sum(np.abs(actual - predicted)))
    if total == 0:
        return 0.0 if error == 0 else float("inf")
    return 100 * error / total


def coverage(actual: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """Share of actual values inside [low, high]."""
    return float(np.mean((actual >= low) & (actual <= high)))
