"""Plots logged to MLflow and DVC: forecasts with their band, anomaly scores with labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training.series import Series


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def forecast_plot(series: Series, start: int, points: np.ndarray, quantiles: np.ndarray, path: Path) -> None:
    """The test region with the model's p10-p90 band and p50 from every origin."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(11, 3.5))
    lead = max(0, start - 288)
    axis.plot(series.timestamps[lead:], series.values[lead:], color="black", linewidth=0.8, label="actual")
    for index, origin in enumerate(points):
        stamps = series.timestamps[origin : origin + quantiles.shape[2]]
        steps = len(stamps)
        axis.fill_between(
            stamps, quantiles[index, 0, :steps], quantiles[index, 2, :steps], color="tab:blue", alpha=0.25, linewidth=0
        )
        axis.plot(
            stamps, quantiles[index, 1, :steps], color="tab:blue", linewidth=1.0, label="p50" if index == 0 else None
        )
    axis.axvline(series.timestamps[start], color="grey", linestyle="--", linewidth=0.8)
    axis.set_title(f"{series.key}: forecast p10-p90 band vs actual (test region right of the dashed line)")
    axis.legend(loc="upper left")
    _save(figure, path)


def anomaly_plot(series: Series, scores: np.ndarray, threshold: float, path: Path) -> None:
    """Values with labelled windows shaded, and the anomaly score against the threshold."""
    plt = _pyplot()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 4.5), sharex=True)
    top.plot(series.timestamps, series.values, color="black", linewidth=0.7)
    for start, end in series.windows:
        for axis in (top, bottom):
            axis.axvspan(start, end, color="tab:red", alpha=0.15)
    bottom.plot(series.timestamps, scores, color="tab:purple", linewidth=0.7)
    bottom.axhline(threshold, color="tab:red", linestyle="--", linewidth=0.8)
    bottom.set_ylim(0, 1.02)
    top.set_title(f"{series.key}: anomaly score vs labelled windows (shaded)")
    _save(figure, path)


def _save(figure: object, path: Path) -> None:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()  # type: ignore[attr-defined]
    figure.savefig(path, dpi=90)  # type: ignore[attr-defined]
    plt.close(figure)
