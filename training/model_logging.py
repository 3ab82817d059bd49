"""Logging the two models as MLflow pyfunc models and registering them with an alias."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import infer_signature

from training.dataset import Prepared
from training.detector import Detector
from training.forecaster import Forecaster
from training.params import RegistryParams
from training.served_models import DetectorModel, ForecasterModel

CODE = str(Path(__file__).resolve().parent)
EXAMPLE_SERIES = 2


def _example(prepared: Prepared, length: int) -> pd.DataFrame:
    """The last ``length`` points of the first series, as the long table the models take."""
    frames = []
    for item in prepared.series[:EXAMPLE_SERIES]:
        frames.append(
            pd.DataFrame(
                {
                    "series_id": item.key,
                    "timestamp": pd.to_datetime(item.timestamps[-length:]).astype(str),
                    "value": item.values[-length:],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def log_models(prepared: Prepared, forecaster_dir: Path, detector_dir: Path) -> dict[str, str]:
    """Log both pyfunc models in the active run; returns their model URIs."""
    forecaster = ForecasterModel()
    forecaster.forecaster = Forecaster.load(forecaster_dir)
    example = _example(prepared, forecaster.forecaster.config.context)
    forecast_info = mlflow.pyfunc.log_model(
        name="load-forecaster",
        python_model=forecaster,
        artifacts={"forecaster": str(forecaster_dir)},
        code_paths=[CODE],
        signature=infer_signature(example, forecaster.predict(None, example)),
        input_example=example,
    )
    detector = DetectorModel()
    detector.detector = Detector.load(detector_dir)
    detect_example = _example(prepared, 600)
    detector_info = mlflow.pyfunc.log_model(
        name="anomaly-detector",
        python_model=detector,
        artifacts={"detector": str(detector_dir)},
        code_paths=[CODE],
        signature=infer_signature(detect_example, detector.predict(None, detect_example)),
        input_example=detect_example,
    )
    return {"forecaster": forecast_info.model_uri, "detector": detector_info.model_uri}


def register_models(
    client: Any, names: RegistryParams, uris: dict[str, str], decisions: dict[str, tuple[bool, str]], run_id: str
) -> dict[str, dict[str, Any]]:
    """Register both versions, then set aliases; a failure removes the versions made."""
    made: list[tuple[str, str]] = []
    result: dict[str, dict[str, Any]] = {}
    try:
        for name, uri in ((names.forecaster_name, uris["forecaster"]), (names.detector_name, uris["detector"])):
            version = mlflow.register_model(uri, name, tags={"run_id": run_id}).version
            made.append((name, str(version)))
        for name, version in made:
            promoted, reason = decisions[name]
            alias = "champion" if promoted else "challenger"
            client.set_registered_model_alias(name, alias, version)
            client.set_model_version_tag(name, version, "promotion", reason)
            result[name] = {"version": version, "alias": alias, "promoted": promoted, "reason": reason}
    except Exception:
        for name, version in made:
            client.delete_model_version(name, version)
        raise
    return result
