"""Raw data in NAB's layout in, prepared series with their test split out."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from tmsops.errors import DataError
from training.loaders.files import load_nab
from training.repair import respace_clock_shifts
from training.series import Series

SERIES_FILE = "series.parquet"
META_FILE = "meta.json"


def load_raw(raw: Path) -> tuple[list[Series], list[str]]:
    """Every series under ``raw`` (NAB layout) with clock shifts re-spaced, and the repair notes."""
    series, notes = [], []
    for item in load_nab(raw):
        repaired, repair_notes = respace_clock_shifts(item)
        series.append(repaired)
        notes.extend(repair_notes)
    return series, notes


def test_start(length: int, test_fraction: float) -> int:
    """Index where the held-out tail (the last ``test_fraction`` of the series) starts."""
    return int(length * (1 - test_fraction))


@dataclass(frozen=True)
class Prepared:
    series: list[Series]
    test_starts: list[int]

    @property
    def values(self) -> list[np.ndarray]:
        return [item.values for item in self.series]

    @property
    def timestamps(self) -> list[np.ndarray]:
        return [item.timestamps for item in self.series]


def prepare(series: list[Series], test_fraction: float) -> Prepared:
    return Prepared(series, [test_start(len(item), test_fraction) for item in series])


def save_prepared(prepared: Prepared, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    frames = [
        pd.DataFrame({"key": item.key, "timestamp": item.timestamps, "value": item.values}) for item in prepared.series
    ]
    pd.concat(frames, ignore_index=True).to_parquet(out / SERIES_FILE, index=False)
    meta = [
        {
            "key": item.key,
            "metric": item.metric,
            "source": item.source,
            "test_start": start,
            "windows": [[str(a), str(b)] for a, b in item.windows],
        }
        for item, start in zip(prepared.series, prepared.test_starts, strict=True)
    ]
    (out / META_FILE).write_text(json.dumps(meta, indent=2))


def load_prepared(directory: Path) -> Prepared:
    if not (directory / META_FILE).is_file():
        raise DataError(str(directory), "no prepared data here; run the prepare stage first")
    meta = json.loads((directory / META_FILE).read_text())
    frame = pd.read_parquet(directory / SERIES_FILE)
    groups = dict(tuple(frame.groupby("key", sort=False)))
    series, starts = [], []
    for entry in meta:
        rows = groups[entry["key"]]
        windows = tuple((np.datetime64(a, "ns"), np.datetime64(b, "ns")) for a, b in entry["windows"])
        series.append(
            Series(
                key=entry["key"],
                timestamps=rows["timestamp"].to_numpy("datetime64[ns]"),
                values=rows["value"].to_numpy(np.float64),
                metric=entry["metric"],
                source=entry["source"],
                windows=windows,
            )
        )
        starts.append(int(entry["test_start"]))
    return Prepared(series, starts)


def with_windows(series: Series, windows: tuple[tuple[np.datetime64, np.datetime64], ...]) -> Series:
    return replace(series, windows=windows)
