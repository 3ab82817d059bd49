"""Stage 4: train the global quantile forecaster on everything before each test region."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from training.dataset import load_prepared
from training.forecaster_fit import fit_forecaster
from training.params import load_params
from training.stage import log, run, stage_app, write_json


def main(
    data: Annotated[Path, typer.Option(help="prepared data folder")] = Path("data/processed"),
    params: Annotated[Path, typer.Option(help="pipeline parameters")] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="model folder, replaced")] = Path("models/forecaster"),
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    prepared = load_prepared(data)
    config = load_params(params).forecaster_config()
    forecaster, metrics = fit_forecaster(
        prepared.values, prepared.timestamps, prepared.test_starts, config, progress=progress
    )
    forecaster.save(out)
    write_json(out / "training.json", metrics)
    log.info("forecaster trained on %d windows: %s", int(metrics["train_windows"]), metrics)


app = stage_app(main)

if __name__ == "__main__":
    run(app)
