"""Stage 1: write the raw data (generated or ingested) in NAB's layout; never edited later."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from tmsops.errors import DataError
from training.generate import GeneratorConfig, generate_traces
from training.loaders.files import load_csv, load_nab, write_nab
from training.params import Params, load_params
from training.series import Series
from training.stage import log, run, stage_app


def collect(params: Params) -> list[Series]:
    """The series the configured source yields."""
    data = params.data
    if data.source == "generate":
        settings = params.generator
        config = GeneratorConfig(
            seed=settings.seed,
            services=tuple(settings.services),
            days=settings.days,
            step_s=settings.step_s,
            start=settings.start,
            incidents_per_service=settings.incidents_per_service,
        )
        return generate_traces(config)
    if data.source == "prometheus":
        from training.loaders.prometheus import load_prometheus

        if not data.prometheus.queries:
            raise DataError("params.yaml", "data.prometheus.queries is empty: name at least one PromQL query")
        end = datetime.now(UTC).replace(tzinfo=None)
        start = end - timedelta(days=data.prometheus.lookback_days)
        return load_prometheus(
            data.prometheus.url, data.prometheus.queries, start=start, end=end, step_s=data.prometheus.step_s
        )
    if not data.path:
        raise DataError("params.yaml", f"data.path must name the input for data.source={data.source}")
    if data.source == "nab":
        return load_nab(Path(data.path), Path(data.labels) if data.labels else None)
    return load_csv(Path(data.path))


def main(
    params: Annotated[Path, typer.Option(help="pipeline parameters")] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="raw data folder (NAB layout), replaced")] = Path("data/raw"),
) -> None:
    settings = load_params(params)
    series = collect(settings)
    if out.exists():
        shutil.rmtree(out)
    write_nab(series, out)
    windows = sum(len(item.windows) for item in series)
    log.info("wrote %d series with %d labelled windows from %s to %s", len(series), windows, settings.data.source, out)


app = stage_app(main)

if __name__ == "__main__":
    run(app)
