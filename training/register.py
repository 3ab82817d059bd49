"""Stage 7: log the run to MLflow, register both models, and move ``champion`` only on merit.

A candidate takes the alias ``champion`` when it beats the current champion (scored
again here, on this evaluation set) and every baseline; otherwise it gets
``challenger`` and the reason is a tag on the version. Registration happens after
everything else is logged, and a failure in it deletes the versions it made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from training.dataset import Prepared, load_prepared
from training.params import Params, load_params
from training.stage import log, read_json, run, stage_app, write_json

CHAMPION, CHALLENGER = "champion", "challenger"


def flat(prefix: str, payload: Any) -> dict[str, Any]:
    """Nested dicts as dotted keys (lists are skipped)."""
    if isinstance(payload, dict):
        result: dict[str, Any] = {}
        for key, value in payload.items():
            result.update(flat(f"{prefix}.{key}" if prefix else str(key), value))
        return result
    return {} if isinstance(payload, list) else {prefix: payload}


def forecaster_decision(
    candidate: dict[str, Any], champion_mase: float | None, baselines: list[str]
) -> tuple[bool, str]:
    mase = candidate["champion"]["mase"]
    for name in baselines:
        if mase >= candidate[name]["mase"]:
            return False, f"MASE {mase:.4f} does not beat baseline {name} ({candidate[name]['mase']:.4f})"
    if champion_mase is not None and mase >= champion_mase:
        return False, f"MASE {mase:.4f} does not beat the current champion ({champion_mase:.4f}) on this evaluation set"
    return True, f"MASE {mase:.4f} beats every baseline" + (
        "" if champion_mase is None else f" and the champion ({champion_mase:.4f})"
    )


def detector_decision(candidate: dict[str, Any], champion_score: float | None) -> tuple[bool, str]:
    score = candidate["detector"]["standard"]["score"]
    baseline = candidate["windowed_gaussian"]["standard"]["score"]
    if not score > baseline:
        return False, f"NAB standard {score:.1f} does not beat the windowed Gaussian baseline ({baseline:.1f})"
    if champion_score is not None and not score > champion_score:
        return (
            False,
            f"NAB standard {score:.1f} does not beat the current champion ({champion_score:.1f}) on this data",
        )
    return True, f"NAB standard {score:.1f} beats the baseline ({baseline:.1f})" + (
        "" if champion_score is None else f" and the champion ({champion_score:.1f})"
    )


def _champion_scores(client: Any, params: Params, prepared: Prepared) -> tuple[float | None, float | None]:
    """The current champions' scores on this evaluation set, or None where there is none."""
    from training.evaluate import anomaly_report, forecast_report

    names = params.registry
    forecast_score = detector_score = None
    if loaded := _load_champion(client, names.forecaster_name):
        report, _ = forecast_report(prepared, loaded.forecaster, params.evaluation.season, [], progress=False)
        forecast_score = report["champion"]["mase"]
    if loaded := _load_champion(client, names.detector_name):
        detector_score = anomaly_report(prepared, loaded.detector)[0]["detector"]["standard"]["score"]
    return forecast_score, detector_score


def _load_champion(client: Any, name: str) -> Any:
    """The champion's python model; None when there is none or this code cannot read it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from training.served_models import IncompatibleModelError

    try:
        version = client.get_model_version_by_alias(name, CHAMPION).version
    except MlflowException:
        return None
    try:
        return mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}").unwrap_python_model()
    except IncompatibleModelError as error:
        log.warning("%s version %s (champion) cannot be compared and will be replaced: %s", name, version, error)
        return None


def main(
    data: Annotated[Path, typer.Option(help="prepared data folder")] = Path("data/processed"),
    forecaster: Annotated[Path, typer.Option(help="trained forecaster folder")] = Path("models/forecaster"),
    detector: Annotated[Path, typer.Option(help="trained detector folder")] = Path("models/detector"),
    metrics: Annotated[Path, typer.Option(help="metrics folder of the evaluate stage")] = Path("metrics"),
    validation: Annotated[Path, typer.Option(help="validation outputs folder")] = Path("data/validation"),
    plots: Annotated[Path, typer.Option(help="plots folder")] = Path("plots"),
    params: Annotated[Path, typer.Option(help="pipeline parameters")] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="registry decision file")] = Path("metrics/registry.json"),
) -> None:
    import mlflow

    from training.model_logging import log_models, register_models

    settings = load_params(params)
    mlflow.set_tracking_uri(settings.registry.tracking_uri)
    mlflow.set_experiment(settings.registry.experiment)
    client = mlflow.MlflowClient()
    prepared = load_prepared(data)
    forecast, anomaly = read_json(metrics / "forecast.json"), read_json(metrics / "anomaly.json")
    champion_mase, champion_nab = _champion_scores(client, settings, prepared)
    decisions = {
        settings.registry.forecaster_name: forecaster_decision(
            forecast, champion_mase, list(settings.evaluation.baselines)
        ),
        settings.registry.detector_name: detector_decision(anomaly, champion_nab),
    }
    with mlflow.start_run(run_name="retrain") as active:
        mlflow.log_params(flat("", settings.model_dump(mode="json")))
        mlflow.log_metrics(
            {
                key: float(value)
                for key, value in {**flat("forecast", forecast), **flat("anomaly", anomaly)}.items()
                if isinstance(value, int | float)
            }
        )
        for folder in (validation, metrics, plots):
            if folder.exists():
                mlflow.log_artifacts(str(folder), artifact_path=folder.name)
        uris = log_models(prepared, forecaster, detector)
        versions = register_models(client, settings.registry, uris, decisions, active.info.run_id)
    write_json(out, versions)
    for name, entry in versions.items():
        log.info("%s version %s -> %s (%s)", name, entry["version"], entry["alias"], entry["reason"])


app = stage_app(main)

if __name__ == "__main__":
    run(app)
