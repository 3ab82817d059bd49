"""Stage 5: train the anomaly detector and choose its threshold on the training part."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from training.anomaly_eval import best_threshold, score_files
from training.dataset import load_prepared
from training.detector_fit import fit_detector
from training.params import load_params
from training.stage import log, run, stage_app, write_json


def main(
    data: Annotated[Path, typer.Option(help="prepared data folder")] = Path("data/processed"),
    params: Annotated[Path, typer.Option(help="pipeline parameters")] = Path("params.yaml"),
    out: Annotated[Path, typer.Option(help="model folder, replaced")] = Path("models/detector"),
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    prepared = load_prepared(data)
    config = load_params(params).detector_config()
    training_parts = [item.values[:start] for item, start in zip(prepared.series, prepared.test_starts, strict=True)]
    detector, metrics = fit_detector(training_parts, config, progress=progress)
    heads = [
        replace(
            item,
            values=item.values[:start],
            timestamps=item.timestamps[:start],
            windows=tuple(w for w in item.windows if w[1] <= item.timestamps[start - 1]),
        )
        for item, start in zip(prepared.series, prepared.test_starts, strict=True)
    ]
    threshold = best_threshold(score_files(detector.score, heads), config.threshold)
    detector = detector.with_threshold(threshold)
    detector.save(out)
    write_json(out / "training.json", {**metrics, "threshold": threshold})
    log.info("detector trained; threshold %.4f chosen on the training part", threshold)


app = stage_app(main)

if __name__ == "__main__":
    run(app)
