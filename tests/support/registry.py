"""A real MLflow registry with small trained champion models, for serving and client tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.dataset import Prepared
from training.detector import DetectorConfig
from training.detector_fit import fit_detector
from training.forecaster import ForecasterConfig
from training.forecaster_fit import fit_forecaster
from training.params import RegistryParams
from training.series import Series

CONTEXT, HORIZON = 48, 6


def synthetic(n: int = 1200, seed: int = 0) -> list[Series]:
    steps = np.arange(n)
    stamps = np.datetime64("2026-01-05", "ns") + steps * np.timedelta64(5, "m")
    rng = np.random.default_rng(seed)
    return [
        Series(f"svc/{name}", stamps, base + scale * np.sin(2 * np.pi * steps / 288) + rng.normal(0, 1, n), name)
        for name, base, scale in (("requests_per_s", 100.0, 30.0), ("cpu_percent", 40.0, 10.0))
    ]


def register_champions(
    root: Path, *, seed: int = 0, epochs: int = 2, series: list[Series] | None = None, hidden: int = 16
) -> str:
    """Train tiny models (on ``series``, by default :func:`synthetic`), log and register them in
    ``root/mlflow.db`` as champions; returns the URI."""
    import mlflow

    from training.model_logging import log_models, register_models

    series = series or synthetic(seed=seed)
    prepared = Prepared(series, [len(item) for item in series])
    values, stamps = prepared.values, prepared.timestamps
    forecaster, _ = fit_forecaster(
        values,
        stamps,
        [len(v) for v in values],
        ForecasterConfig(context=CONTEXT, horizon=HORIZON, hidden=hidden, layers=1, epochs=epochs, seed=seed),
        progress=False,
    )
    detector, _ = fit_detector(values, DetectorConfig(epochs=2, seed=seed), progress=False)
    forecaster.save(root / f"forecaster-{seed}")
    detector.save(root / f"detector-{seed}")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name("serving-tests") is None:
        mlflow.create_experiment("serving-tests", artifact_location=(root / "artifacts").as_uri())
    mlflow.set_experiment("serving-tests")
    client = mlflow.MlflowClient(tracking_uri=uri)
    with mlflow.start_run() as run:
        mlflow.log_metric("forecast.champion.mase", 0.5)
        uris = log_models(prepared, root / f"forecaster-{seed}", root / f"detector-{seed}")
        names = RegistryParams()
        decisions = {names.forecaster_name: (True, "test"), names.detector_name: (True, "test")}
        register_models(client, names, uris, decisions, run.info.run_id)
    return uri
