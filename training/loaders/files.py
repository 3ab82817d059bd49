"""Metric series from files: NAB's layout and plain ``timestamp,value`` CSV files.

Loading is lenient about cell contents: a timestamp that does not parse becomes NaT
and a value that is not a number becomes NaN, so that the validation suite can report
every bad row with its line number. What cannot be loaded at all (a missing or empty
file, a header only, missing columns, labels naming missing files) raises
:class:`DataError` naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from tmsops.errors import DataError
from training.series import Series, Window, metric_kind

REQUIRED_COLUMNS = ("timestamp", "value")


def read_table(path: Path) -> pd.DataFrame:
    """A CSV file as text columns, with every structural problem named."""
    if not path.is_file():
        raise DataError(str(path), "file not found")
    if path.stat().st_size == 0:
        raise DataError(str(path), "the file is empty")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(str(path), f"not a readable CSV file ({error})") from error
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(
            str(path), f"missing column(s) {', '.join(missing)}; found {', '.join(map(str, frame.columns))}"
        )
    if frame.empty:
        raise DataError(str(path), "the file has a header but no rows")
    return frame


def to_series(frame: pd.DataFrame, key: str, source: str, metric: str | None = None) -> Series:
    timestamps = pd.to_datetime(frame["timestamp"], errors="coerce", format="mixed", utc=True)
    values = pd.to_numeric(frame["value"].replace("", None), errors="coerce")
    return Series(
        key=key,
        timestamps=timestamps.dt.tz_localize(None).to_numpy("datetime64[ns]"),
        values=values.to_numpy(np.float64, na_value=np.nan),
        metric=metric or metric_kind(key),
        source=source,
    )


def load_csv(path: Path) -> list[Series]:
    """A ``timestamp,value[,service,metric]`` file, or every ``*.csv`` below a folder."""
    if path.is_dir():
        files = sorted(path.rglob("*.csv"))
        if not files:
            raise DataError(str(path), "the folder holds no .csv file")
        return [series for file in files for series in _load_csv_file(file, path)]
    return _load_csv_file(path, path.parent)


def _load_csv_file(path: Path, root: Path) -> list[Series]:
    frame = read_table(path)
    stem = path.relative_to(root).with_suffix("").as_posix()
    if "service" not in frame.columns and "metric" not in frame.columns:
        return [to_series(frame, stem, str(path))]
    groups = [column for column in ("service", "metric") if column in frame.columns]
    result = []
    for labels, rows in frame.groupby(groups, sort=True):
        parts = [str(label) for label in (labels if isinstance(labels, tuple) else (labels,))]
        metric = str(rows["metric"].iloc[0]) if "metric" in rows else None
        key = "/".join(parts) if "service" in groups else f"{stem}/{parts[0]}"
        result.append(to_series(rows.reset_index(drop=True), key, str(path), metric_kind(metric or key)))
    return result


def load_nab(root: Path, labels: Path | None = None) -> list[Series]:
    """A folder in NAB's layout: ``data/<category>/<name>.csv`` and ``labels/combined_windows.json``.

    ``root`` may also be the ``data`` folder itself or one category folder, as long as
    the labels file is given or found at ``<nab root>/labels/combined_windows.json``.
    """
    data_root, files = _nab_files(root)
    labels_path = labels or _find_labels(data_root)
    windows = load_windows(labels_path, data_root, files) if labels_path else {}
    series = []
    for file in files:
        key = file.relative_to(data_root).with_suffix("").as_posix()
        loaded = to_series(read_table(file), key, str(file))
        series.append(_with_windows(loaded, windows.get(key, ())))
    return series


def _nab_files(root: Path) -> tuple[Path, list[Path]]:
    if not root.is_dir():
        raise DataError(str(root), "folder not found")
    data_root = root / "data" if (root / "data").is_dir() else root
    files = sorted(data_root.rglob("*.csv"))
    if not files:
        raise DataError(str(root), "no .csv files in NAB layout (expected data/<category>/<name>.csv)")
    if all(file.parent == data_root for file in files) and data_root.parent.name == "data":
        data_root = data_root.parent  # a single category folder was given
    return data_root, files


def _find_labels(data_root: Path) -> Path | None:
    candidate = data_root.parent / "labels" / "combined_windows.json"
    return candidate if candidate.is_file() else None


def load_windows(labels: Path, data_root: Path, files: Iterable[Path]) -> dict[str, tuple[Window, ...]]:
    """NAB's ``combined_windows.json``: file -> list of [start, end]; keys must exist."""
    try:
        raw = json.loads(labels.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(str(labels), f"not a readable labels file ({error})") from error
    if not isinstance(raw, dict):
        raise DataError(str(labels), "expected an object mapping <category>/<name>.csv to windows")
    present = {file.relative_to(data_root).as_posix() for file in files}
    scope = {name.rsplit("/", 1)[0] for name in present}
    wanted = {name for name in raw if name.rsplit("/", 1)[0] in scope}
    missing = sorted(wanted - present)
    if missing:
        raise DataError(str(labels), f"names files that do not exist under {data_root}: {', '.join(missing[:5])}")
    return {name.removesuffix(".csv"): _parse_windows(labels, name, raw[name]) for name in wanted}


def _parse_windows(labels: Path, name: str, windows: object) -> tuple[Window, ...]:
    try:
        pairs = [(np.datetime64(pd.Timestamp(a)), np.datetime64(pd.Timestamp(b))) for a, b in windows]  # type: ignore[attr-defined]
    except (TypeError, ValueError) as error:
        raise DataError(str(labels), f"bad window for {name}: {error}") from error
    return tuple((a.astype("datetime64[ns]"), b.astype("datetime64[ns]")) for a, b in pairs)


def _with_windows(series: Series, windows: tuple[Window, ...]) -> Series:
    return Series(series.key, series.timestamps, series.values, series.metric, series.source, windows)


def write_nab(series: Iterable[Series], root: Path) -> None:
    """Write series and their windows in NAB's layout under ``root``."""
    windows: dict[str, list[list[str]]] = {}
    for item in series:
        path = root / "data" / f"{item.key}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame({"timestamp": pd.to_datetime(item.timestamps), "value": item.values})
        frame.to_csv(path, index=False, date_format="%Y-%m-%d %H:%M:%S")
        windows[f"{item.key}.csv"] = [
            [str(pd.Timestamp(a)) + ".000000", str(pd.Timestamp(b)) + ".000000"] for a, b in item.windows
        ]
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows, indent=2, sort_keys=True))
