"""Stage 2: the Great Expectations suite; bad data stops the pipeline here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from training.dataset import load_raw
from training.params import load_params
from training.stage import log, run, stage_app, write_json
from training.validation import Rules, validate


def main(
    raw: Annotated[Path, typer.Option(help="raw data folder (NAB layout)")] = Path("data/raw"),
    params: Annotated[Path, typer.Option(help="pipeline parameters")] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="validation outputs folder")] = Path("data/validation"),
) -> None:
    settings = load_params(params)
    forecaster = settings.forecaster_config()
    series, notes = load_raw(raw)
    for note in notes:
        log.warning(note)
    rules = Rules(
        min_length=forecaster.context + forecaster.horizon,
        max_gap_steps=settings.validation.max_gap_steps,
        min_step_ratio=settings.validation.min_step_ratio,
    )
    report = validate(series, rules)
    write_json(out / "gx_results.json", {result.key: result.gx_result for result in report.results})
    write_json(out / "report.json", {**report.summary(), "repairs": notes})
    if not report.success:
        for result in report.failed():
            print(result.message(), file=sys.stderr)
        print(
            f"error: {len(report.failed())} of {len(series)} series failed validation; nothing downstream runs",
            file=sys.stderr,
        )
        raise typer.Exit(1)
    log.info("all %d series passed validation", len(series))


app = stage_app(main)

if __name__ == "__main__":
    run(app)
