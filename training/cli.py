"""``tmsops eval``: what a user gets when they point tmsops at their own metrics."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tmsops.errors import DataError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Evaluate the models on your own data.")

JsonFlag = Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")]


@app.command("forecast")
def eval_forecast(
    data: Annotated[Path, typer.Option(help="folder of timestamp,value CSV files (or one file)")],
    horizon: Annotated[int | None, typer.Option(min=1, help="forecast steps (default: params.yaml)")] = None,
    model_uri: Annotated[str | None, typer.Option(help="evaluate this MLflow model as it is, no training")] = None,
    params: Annotated[Path, typer.Option(help="pipeline parameters")] = Path("params.yaml"),
    as_json: JsonFlag = False,
) -> None:
    """Train on the first 80% of every series, forecast the last 20% from rolling origins,
    beside the naive, seasonal naive, AutoETS and MSTL baselines on the same origins."""
    from training.evaluation_commands import evaluate_forecast_folder

    _quiet()
    report = evaluate_forecast_folder(data, params, horizon=horizon, model_uri=model_uri)
    _emit(report, as_json, _forecast_table)


@app.command("anomaly")
def eval_anomaly(
    data: Annotated[Path, typer.Option(help="folder in NAB's layout (or its data/ folder)")],
    labels: Annotated[Path, typer.Option(help="NAB labels file (combined_windows.json)")],
    out: Annotated[Path, typer.Option(help="folder for NAB-format result files")],
    model_uri: Annotated[str | None, typer.Option(help="detector to use (default: the champion)")] = None,
    params: Annotated[Path, typer.Option(help="pipeline parameters (registry location)")] = Path("params.yaml"),
    as_json: JsonFlag = False,
) -> None:
    """Score every file causally with the detector, write NAB result files, print NAB scores."""
    from training.evaluation_commands import evaluate_anomaly_folder

    _quiet()
    if not labels.is_file():
        raise DataError(str(labels), "labels file not found")
    report = evaluate_anomaly_folder(data, labels, out, params, model_uri=model_uri)
    _emit(report, as_json, _anomaly_table)


def _quiet() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def _emit(report: dict[str, Any], as_json: bool, table: Any) -> None:
    if as_json:
        print(json.dumps(report, indent=2, default=float))
    else:
        print(table(report))


def _forecast_table(report: dict[str, Any]) -> str:
    names = [name for name in ("champion", "naive", "seasonal_naive", "autoets", "mstl") if name in report]
    lines = [
        f"{report['series']} series, horizon {report['horizon']} steps",
        f"{'model':16} {'MASE':>8} {'sMAPE':>8} {'WAPE':>8}",
    ]
    lines += [
        f"{name:16} {report[name]['mase']:8.3f} {report[name]['smape']:8.2f} {report[name]['wape']:8.2f}"
        for name in names
    ]
    lines.append(f"p10-p90 coverage of the model: {report['champion']['coverage']:.1%}")
    return "\n".join(lines)


def _anomaly_table(report: dict[str, Any]) -> str:
    lines = [f"{report['files']} files scored by {report['detector']}; results in {report['results']}"]
    for profile in ("standard", "reward_low_FP_rate", "reward_low_FN_rate"):
        own = report["own_threshold"][profile]
        lines.append(f"{profile:20} {report[profile]:6.1f}   (own threshold {own:6.1f})")
    return "\n".join(lines)
