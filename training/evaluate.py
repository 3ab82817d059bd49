"""Stage 6: forecast metrics on the held-out tails and NAB scores, beside the baselines."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from training.anomaly_eval import nab_report, score_files, windowed_gaussian
from training.baselines import origins
from training.dataset import Prepared, load_prepared
from training.detector import Detector
from training.forecast_eval import baseline_forecasts, check_lengths, evaluate_forecasts, model_forecasts
from training.forecaster import Forecaster
from training.params import load_params
from training.plots import anomaly_plot, forecast_plot
from training.stage import log, run, stage_app, write_json

PLOTTED_SERIES = 4


def forecast_report(
    prepared: Prepared, forecaster: Forecaster, season: int, baselines: list[str], progress: bool
) -> tuple[dict[str, Any], list[np.ndarray]]:
    config = forecaster.config
    check_lengths(prepared, config.context, config.horizon)
    quantiles = model_forecasts(forecaster.predict, prepared, config.context, config.horizon)
    others = baseline_forecasts(prepared, config.horizon, season, baselines, progress)
    return evaluate_forecasts(prepared, quantiles, others, horizon=config.horizon, season=season), quantiles


def anomaly_report(prepared: Prepared, detector: Detector) -> tuple[dict[str, Any], list[np.ndarray]]:
    files = score_files(detector.score, prepared.series)
    baseline = score_files(windowed_gaussian, prepared.series)
    report = {
        "detector": nab_report(files, detector.config.threshold),
        "windowed_gaussian": nab_report(baseline, 1.0),
        "files": len(files),
        "windows": sum(len(item.windows) for item in prepared.series),
    }
    return report, [item.scores for item in files]


def main(
    data: Annotated[Path, typer.Option(help="prepared data folder")] = Path("data/processed"),
    forecaster: Annotated[Path, typer.Option(help="trained forecaster folder")] = Path("models/forecaster"),
    detector: Annotated[Path, typer.Option(help="trained detector folder")] = Path("models/detector"),
    params: Annotated[Path, typer.Option(help="pipeline parameters")] = Path("params.yaml"),
    metrics: Annotated[Path, typer.Option(help="metrics folder")] = Path("metrics"),
    plots: Annotated[Path, typer.Option(help="plots folder, replaced")] = Path("plots"),
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    settings = load_params(params)
    prepared = load_prepared(data)
    model, scorer = Forecaster.load(forecaster), Detector.load(detector)
    forecasts, quantiles = forecast_report(
        prepared, model, settings.evaluation.season, list(settings.evaluation.baselines), progress
    )
    anomalies, scores = anomaly_report(prepared, scorer)
    write_json(metrics / "forecast.json", {key: value for key, value in forecasts.items() if key != "per_series"})
    write_json(metrics / "forecast_per_series.json", forecasts["per_series"])
    write_json(metrics / "anomaly.json", anomalies)
    if plots.exists():
        shutil.rmtree(plots)
    for index, item in enumerate(prepared.series[:PLOTTED_SERIES]):
        start = prepared.test_starts[index]
        points = origins(len(item), start, model.config.horizon)
        forecast_plot(item, start, points, quantiles[index], plots / f"forecast_{item.key.replace('/', '_')}.png")
    labelled = [index for index, item in enumerate(prepared.series) if item.windows][:PLOTTED_SERIES]
    for index in labelled:
        item = prepared.series[index]
        anomaly_plot(item, scores[index], scorer.config.threshold, plots / f"anomaly_{item.key.replace('/', '_')}.png")
    summary = {name: round(forecasts[name]["mase"], 4) for name in ["champion", *settings.evaluation.baselines]}
    log.info("MASE: %s; NAB standard: %.1f", summary, anomalies["detector"]["standard"]["score"])


app = stage_app(main)

if __name__ == "__main__":
    run(app)
