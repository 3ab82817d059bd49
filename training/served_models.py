"""The MLflow pyfunc wrappers through which the trained models leave the pipeline.

Input of both: a long table with columns ``series_id``, ``timestamp``, ``value``
(one row per point, in time order within a series). The forecaster forecasts the
``horizon`` steps after each series' last point; the detector scores every point.
Servers that batch many series call :meth:`ForecasterModel.forecast` and
:meth:`DetectorModel.score` directly through ``unwrap_python_model()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from tmsops.errors import PermanentError
from training.detector import Detector
from training.forecaster import Forecaster


class IncompatibleModelError(PermanentError):
    """A logged model this version of the code cannot read (its format changed since)."""


def _load(kind: type[Forecaster] | type[Detector], directory: Path) -> Any:
    try:
        return kind.load(directory)
    except (RuntimeError, TypeError, KeyError, FileNotFoundError) as error:
        raise IncompatibleModelError(
            f"the {kind.__name__.lower()} in {directory} was saved in a format this code cannot read; "
            f"retrain it ({type(error).__name__}: {str(error).splitlines()[0]})"
        ) from error


def _grouped(model_input: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    missing = {"series_id", "timestamp", "value"} - set(model_input.columns)
    if missing:
        raise ValueError(f"model input lacks column(s): {', '.join(sorted(missing))}")
    return [(str(key), rows) for key, rows in model_input.groupby("series_id", sort=False)]


class ForecasterModel(PythonModel):
    forecaster: Forecaster

    def load_context(self, context: Any) -> None:
        self.forecaster = _load(Forecaster, Path(context.artifacts["forecaster"]))

    def forecast(self, contexts: np.ndarray, origin_times: np.ndarray) -> np.ndarray:
        """(batch, context) values and last timestamps -> (batch, 3, horizon) p10/p50/p90."""
        return self.forecaster.predict(contexts, origin_times)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        size, horizon = self.forecaster.config.context, self.forecaster.config.horizon
        groups = _grouped(model_input)
        short = [key for key, rows in groups if len(rows) < size]
        if short:
            raise ValueError(f"series {', '.join(short[:5])} have fewer than {size} points")
        stamps = [pd.to_datetime(rows["timestamp"]).to_numpy("datetime64[ns]") for _, rows in groups]
        contexts = np.stack([rows["value"].to_numpy(np.float64)[-size:] for _, rows in groups])
        quantiles = self.forecast(contexts, np.array([s[-1] for s in stamps]))
        frames = []
        for index, (key, _) in enumerate(groups):
            step = np.median(np.diff(stamps[index]))
            frames.append(
                pd.DataFrame(
                    {
                        "series_id": key,
                        "step": np.arange(1, horizon + 1),
                        "timestamp": stamps[index][-1] + step * np.arange(1, horizon + 1),
                        "p10": quantiles[index, 0],
                        "p50": quantiles[index, 1],
                        "p90": quantiles[index, 2],
                    }
                )
            )
        return pd.concat(frames, ignore_index=True)


class DetectorModel(PythonModel):
    detector: Detector

    def load_context(self, context: Any) -> None:
        self.detector = _load(Detector, Path(context.artifacts["detector"]))

    @property
    def threshold(self) -> float:
        return self.detector.config.threshold

    def score(self, values: np.ndarray) -> np.ndarray:
        return self.detector.score(values)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        frames = []
        for key, rows in _grouped(model_input):
            scores = self.score(rows["value"].to_numpy(np.float64))
            frames.append(
                pd.DataFrame(
                    {
                        "series_id": key,
                        "timestamp": rows["timestamp"].to_numpy(),
                        "score": scores,
                        "is_anomaly": scores >= self.threshold,
                    }
                )
            )
        return pd.concat(frames, ignore_index=True)
