"""Print the registered models, their aliases and evaluation metrics, and the MLflow UI command."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from training.params import load_params
from training.stage import read_json


def main() -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    params = load_params(Path("params.yaml"))
    uri = os.environ.get("MLFLOW_TRACKING_URI", params.registry.tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    print(f"\nRegistered models in {uri}:")
    for name in (params.registry.forecaster_name, params.registry.detector_name):
        try:
            model = client.get_registered_model(name)
        except MlflowException:
            print(f"  {name}: not registered yet (run `make run`)")
            continue
        aliases = ", ".join(f"{alias} -> v{version}" for alias, version in sorted(model.aliases.items())) or "no alias"
        print(f"  {name}: {aliases}")
    for path in (Path("metrics/forecast.json"), Path("metrics/anomaly.json")):
        if path.is_file():
            print(f"  {path}: {_headline(read_json(path))}")
    print("\nOpen the MLflow UI: make mlflow-ui  ->  http://127.0.0.1:5000\n")
    sys.stdout.flush()


def _headline(metrics: dict[str, Any]) -> str:
    if "champion" in metrics:
        return ", ".join(
            f"{name} MASE {metrics[name]['mase']:.3f}"
            for name in ("champion", "naive", "seasonal_naive", "autoets", "mstl")
            if name in metrics
        )
    detector = metrics["detector"]["standard"]
    baseline = metrics["windowed_gaussian"]["standard"]
    return f"NAB standard {detector['score']:.1f} (windowed Gaussian {baseline['score']:.1f})"


if __name__ == "__main__":
    main()
