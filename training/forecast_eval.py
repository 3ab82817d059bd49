"""Rolling-origin evaluation of the forecaster beside the baselines, on the same origins."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tmsops.errors import DataError
from training.baselines import origins, rolling_origin_baselines
from training.dataset import Prepared
from training.metrics import coverage, mase, seasonal_scale, smape, wape

# (contexts (batch, context), origin times (batch,)) -> quantiles (batch, 3, horizon)
QuantileForecast = Callable[[np.ndarray, np.ndarray], np.ndarray]


def check_lengths(prepared: Prepared, context: int, horizon: int) -> None:
    """Every series needs a full context before its test region and one horizon inside it."""
    for item, start in zip(prepared.series, prepared.test_starts, strict=True):
        if start < context or len(item) - start < horizon:
            raise DataError(
                item.source,
                f"too short to evaluate: {len(item)} points, the test region starts at {start}; "
                f"needs {context} points of context before it and {horizon} inside it",
            )


def model_forecasts(forecast: QuantileForecast, prepared: Prepared, context: int, horizon: int) -> list[np.ndarray]:
    """Quantile forecasts (n_origins, 3, horizon) per series, each from data before its origin."""
    result = []
    for item, start in zip(prepared.series, prepared.test_starts, strict=True):
        points = origins(len(item), start, horizon)
        contexts = np.stack([item.values[point - context : point] for point in points])
        result.append(forecast(contexts, item.timestamps[points - 1]))
    return result


def actuals(prepared: Prepared, horizon: int) -> list[np.ndarray]:
    return [
        np.stack([item.values[point : point + horizon] for point in origins(len(item), start, horizon)])
        for item, start in zip(prepared.series, prepared.test_starts, strict=True)
    ]


def evaluate_forecasts(
    prepared: Prepared,
    quantiles: list[np.ndarray],
    baselines: dict[str, list[np.ndarray]],
    *,
    horizon: int,
    season: int,
    model_name: str = "champion",
) -> dict[str, Any]:
    """The output contract of ``tmsops eval forecast``: aggregates, per series, horizon."""
    truth = actuals(prepared, horizon)
    scales = [
        seasonal_scale(item.values[:start], season)
        for item, start in zip(prepared.series, prepared.test_starts, strict=True)
    ]
    points = {model_name: [q[:, 1] for q in quantiles], **baselines}
    per_series = []
    for index, item in enumerate(prepared.series):
        row: dict[str, Any] = {"key": item.key, "origins": len(truth[index]), "scale": scales[index]}
        for name, predicted in points.items():
            row[name] = _scores(truth[index], predicted[index], scales[index])
        row[model_name]["coverage"] = coverage(truth[index], quantiles[index][:, 0], quantiles[index][:, 2])
        per_series.append(row)
    report: dict[str, Any] = {
        name: _aggregate(per_series, name, truth, predicted) for name, predicted in points.items()
    }
    report[model_name]["coverage"] = float(np.mean([row[model_name]["coverage"] for row in per_series]))
    report.update(horizon=horizon, season=season, series=len(per_series), per_series=per_series)
    return report


def _scores(actual: np.ndarray, predicted: np.ndarray, scale: float) -> dict[str, float]:
    return {"mase": mase(actual, predicted, scale), "smape": smape(actual, predicted), "wape": wape(actual, predicted)}


def _aggregate(
    per_series: Sequence[dict[str, Any]], name: str, truth: list[np.ndarray], predicted: list[np.ndarray]
) -> dict[str, float]:
    """MASE and sMAPE averaged over series; WAPE pooled over every point."""
    return {
        "mase": float(np.mean([row[name]["mase"] for row in per_series])),
        "smape": float(np.mean([row[name]["smape"] for row in per_series])),
        "wape": wape(np.concatenate([t.ravel() for t in truth]), np.concatenate([p.ravel() for p in predicted])),
    }


def baseline_forecasts(
    prepared: Prepared, horizon: int, season: int, names: Sequence[str], progress: bool
) -> dict[str, list[np.ndarray]]:
    return rolling_origin_baselines(
        prepared.values, prepared.test_starts, horizon, season, names=names, progress=progress
    )
