"""Stage 3: validated raw series -> prepared series with their held-out tails marked."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tmsops.errors import DataError
from training.dataset import load_raw, prepare, save_prepared
from training.params import load_params
from training.stage import log, read_json, run, stage_app


def main(
    raw: Annotated[Path, typer.Option(help="raw data folder (NAB layout)")] = Path("data/raw"),
    validation: Annotated[Path, typer.Option(help="report of the validate stage")] = Path(
        "data/validation/report.json"
    ),
    params: Annotated[Path, typer.Option(help="pipeline parameters")] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="prepared data folder")] = Path("data/processed"),
) -> None:
    if not validation.is_file() or not read_json(validation).get("success"):
        raise DataError(str(validation), "the data has not passed validation; run the validate stage first")
    settings = load_params(params)
    series, _ = load_raw(raw)
    prepared = prepare(series, settings.split.test_fraction)
    save_prepared(prepared, out)
    log.info("prepared %d series; the last %.0f%% of each is held out", len(series), 100 * settings.split.test_fraction)


app = stage_app(main)

if __name__ == "__main__":
    run(app)
