"""The work behind ``tmsops eval forecast`` and ``tmsops eval anomaly``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tmsops.errors import DataError
from training.anomaly_eval import nab_report, score_files
from training.dataset import prepare
from training.detector import Detector
from training.evaluate import forecast_report
from training.forecaster import Forecaster
from training.forecaster_fit import fit_forecaster
from training.loaders.files import load_csv, load_nab
from training.nab_scoring import window_labels
from training.params import Params, load_params
from training.repair import respace_clock_shifts
from training.series import Series
from training.served_models import IncompatibleModelError
from training.stage import log
from training.validation import Rules, validate

TEST_FRACTION = 0.2
DETECTOR_NAME = "tmsops"


def checked(series: list[Series], params: Params, min_length: int) -> list[Series]:
    """Clock shifts re-spaced, then the validation suite; any failure stops here."""
    repaired = []
    for item in series:
        fixed, notes = respace_clock_shifts(item)
        for note in notes:
            log.warning(note)
        repaired.append(fixed)
    rules = Rules(
        min_length=min_length,
        max_gap_steps=params.validation.max_gap_steps,
        min_step_ratio=params.validation.min_step_ratio,
    )
    report = validate(repaired, rules)
    if not report.success:
        failed = report.failed()
        message = "\n".join(result.message() for result in failed[:5])
        raise DataError(failed[0].source, f"{len(failed)} series failed validation:\n{message}")
    return repaired


def _load_model(uri: str, params: Params) -> Any:
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(params.registry.tracking_uri)
    try:
        return mlflow.pyfunc.load_model(uri).unwrap_python_model()
    except IncompatibleModelError as error:
        raise DataError(uri, error.message) from error
    except (MlflowException, OSError) as error:
        raise DataError(uri, f"cannot load the model ({error})") from error


def evaluate_forecast_folder(
    data: Path, params_path: Path, *, horizon: int | None, model_uri: str | None
) -> dict[str, Any]:
    params = load_params(params_path)
    started = time.monotonic()
    if model_uri:
        forecaster: Forecaster = _load_model(model_uri, params).forecaster
        if horizon is not None and horizon != forecaster.config.horizon:
            raise DataError(
                model_uri, f"the model forecasts {forecaster.config.horizon} steps, not --horizon {horizon}"
            )
    config = forecaster.config if model_uri else params.forecaster_config(**({"horizon": horizon} if horizon else {}))
    series = checked(load_csv(data), params, config.context + config.horizon)
    prepared = prepare(series, TEST_FRACTION)
    if not model_uri:
        forecaster, _ = fit_forecaster(
            prepared.values, prepared.timestamps, prepared.test_starts, config, progress=True
        )
    report, _ = forecast_report(
        prepared, forecaster, params.evaluation.season, list(params.evaluation.baselines), progress=True
    )
    report["model"] = model_uri or "trained on the data before each test region (params.yaml)"
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def evaluate_anomaly_folder(
    data: Path, labels: Path, out: Path, params_path: Path, *, model_uri: str | None
) -> dict[str, Any]:
    params = load_params(params_path)
    started = time.monotonic()
    uri = model_uri or f"models:/{params.registry.detector_name}@champion"
    detector: Detector = _load_model(uri, params).detector
    series = load_nab(data, labels)
    checked(series, params, min_length=2)  # scored as given: NAB's scorer reads the original stamps
    files = score_files(detector.score, series)
    for item, scored in zip(series, files, strict=True):
        write_result_file(out, item, scored.scores)
    nab = nab_report(files, detector.config.threshold)
    profiles = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
    return {
        "detector": DETECTOR_NAME,
        "model_uri": uri,
        **{profile: nab[profile]["score"] for profile in profiles},
        "own_threshold": {profile: nab[profile]["own_threshold_score"] for profile in profiles},
        "details": nab,
        "files": len(files),
        "results": str(out),
        "seconds": round(time.monotonic() - started, 1),
    }


def write_result_file(out: Path, series: Series, scores: np.ndarray) -> None:
    """NAB's result format: ``<out>/<category>/<detector>_<name>.csv``."""
    path = out / series.category / f"{DETECTOR_NAME}_{series.name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "timestamp": pd.to_datetime(series.timestamps).strftime("%Y-%m-%d %H:%M:%S"),
            "value": series.values,
            "anomaly_score": scores,
            "label": window_labels(series.timestamps, series.windows),
        }
    ).to_csv(path, index=False)
