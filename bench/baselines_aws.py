"""Rolling-origin baselines on NAB's realAWSCloudwatch series: wall-clock time and mean MASE.

Usage: python bench/baselines_aws.py [DATA_DIR]   (default: ../shared/data/nab-dev/data/realAWSCloudwatch
relative to the repository). Prints one JSON object: per baseline the seconds for all series and
the mean MASE, side by side with the naive forecast every model must beat.

MASE of one series = mean absolute error over all its origins and steps / in-sample MAE of the
seasonal naive (lag = one day) on the values before the test region. Series with a zero scale
(no change in the training part) are left out of the mean and counted.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from training.baselines import BASELINES, origins, rolling_origin_baselines

REPO = Path(__file__).resolve().parent.parent

HORIZON = 12  # one hour at 5-minute steps
SEASON = 288  # one day at 5-minute steps
TEST_FRACTION = 0.8


def read_values(path: Path) -> np.ndarray:
    with path.open(newline="") as handle:
        return np.array([float(row["value"]) for row in csv.DictReader(handle)], dtype=np.float64)


def mase(y: np.ndarray, test_start: int, forecasts: np.ndarray) -> float:
    cut = origins(len(y), test_start, HORIZON)
    actual = y[cut[:, None] + np.arange(HORIZON)[None, :]]
    train = y[:test_start]
    scale = float(np.mean(np.abs(train[SEASON:] - train[:-SEASON])))
    return float(np.mean(np.abs(forecasts - actual)) / scale) if scale > 0 else float("nan")


def main(argv: list[str]) -> None:
    data_dir = Path(argv[1]) if len(argv) > 1 else REPO.parent / "shared/data/nab-dev/data/realAWSCloudwatch"
    files = sorted(data_dir.glob("*.csv"))
    if not files:
        raise SystemExit(f"no CSV files in {data_dir}")
    series = [read_values(path) for path in files]
    starts = [int(TEST_FRACTION * len(y)) for y in series]

    started = time.perf_counter()
    import statsforecast.models  # noqa: F401  (timed apart: the import alone takes seconds)

    import_s = time.perf_counter() - started
    # The first fit on a tiny series: one-off costs (lazy imports, JIT compilation) show up here.
    tiny = np.sin(np.arange(24 * 16) * 2 * np.pi / 24) + 2.0
    started = time.perf_counter()
    rolling_origin_baselines([tiny], [24 * 14], 12, 24, names=("autoets", "mstl"))
    first_call_s = time.perf_counter() - started

    report: dict[str, object] = {
        "series": len(series),
        "origins": int(sum(len(origins(len(y), s, HORIZON)) for y, s in zip(series, starts, strict=True))),
        "horizon": HORIZON,
        "season": SEASON,
        "import_statsforecast_s": round(import_s, 2),
        "first_call_s": round(first_call_s, 2),
    }
    baselines: dict[str, dict[str, object]] = {}
    total = 0.0
    for name in BASELINES:
        started, cpu_started = time.perf_counter(), time.process_time()
        forecasts = rolling_origin_baselines(series, starts, HORIZON, SEASON, names=(name,))[name]
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
        total += seconds
        scores = np.array([mase(y, s, f) for y, s, f in zip(series, starts, forecasts, strict=True)])
        baselines[name] = {
            "seconds": round(seconds, 3),
            "cpu_seconds": round(cpu_seconds, 3),  # wall and CPU differ when the machine is busy
            "mean_mase": round(float(np.nanmean(scores)), 4),
            "median_mase": round(float(np.nanmedian(scores)), 4),
            "series_without_scale": int(np.isnan(scores).sum()),
            "mase": {path.stem: round(float(v), 4) for path, v in zip(files, scores, strict=True)},
        }
    report["baselines"] = baselines
    report["total_seconds"] = round(total, 2)
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv)
