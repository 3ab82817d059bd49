"""Loaders: NAB layout, plain CSV files and folders, and every structural bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tmsops.errors import DataError
from training.loaders.files import load_csv, load_nab, write_nab
from training.series import Series


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def nab_tree(root: Path) -> Path:
    rows = "".join(f"2024-01-01 00:{minute:02d}:00,{minute}.5\n" for minute in range(0, 60, 5))
    write(root / "data" / "web" / "cpu_a.csv", "timestamp,value\n" + rows)
    write(root / "data" / "web" / "requests_b.csv", "timestamp,value\n" + rows)
    labels = {"web/cpu_a.csv": [["2024-01-01 00:10:00.000000", "2024-01-01 00:20:00.000000"]], "web/requests_b.csv": []}
    write(root / "labels" / "combined_windows.json", json.dumps(labels))
    return root


def test_nab_layout_with_labels(tmp_path: Path) -> None:
    series = load_nab(nab_tree(tmp_path))
    assert [item.key for item in series] == ["web/cpu_a", "web/requests_b"]
    cpu = series[0]
    assert cpu.metric == "cpu_percent" and series[1].metric == "requests_per_s"
    assert len(cpu) == 12 and cpu.values[1] == 5.5
    assert cpu.timestamps[0] == np.datetime64("2024-01-01T00:00:00")
    assert cpu.windows == ((np.datetime64("2024-01-01T00:10:00", "ns"), np.datetime64("2024-01-01T00:20:00", "ns")),)
    assert series[1].windows == ()


def test_nab_category_folder_finds_the_labels(tmp_path: Path) -> None:
    series = load_nab(nab_tree(tmp_path) / "data" / "web")
    assert [item.key for item in series] == ["web/cpu_a", "web/requests_b"]
    assert len(series[0].windows) == 1


def test_labels_naming_missing_files(tmp_path: Path) -> None:
    root = nab_tree(tmp_path)
    labels = root / "labels" / "combined_windows.json"
    labels.write_text(json.dumps({"web/cpu_a.csv": [], "web/gone.csv": []}))
    with pytest.raises(DataError, match=r"combined_windows.json: names files that do not exist.*web/gone.csv"):
        load_nab(root, labels)


def test_nab_round_trip(tmp_path: Path) -> None:
    original = load_nab(nab_tree(tmp_path / "a"))
    write_nab(original, tmp_path / "b")
    again = load_nab(tmp_path / "b")
    assert [item.key for item in again] == [item.key for item in original]
    np.testing.assert_array_equal(again[0].values, original[0].values)
    np.testing.assert_array_equal(again[0].timestamps, original[0].timestamps)
    assert again[0].windows == original[0].windows


def test_plain_csv_file(tmp_path: Path) -> None:
    path = write(tmp_path / "latency.csv", "timestamp,value\n2024-01-01T00:00:00Z,1\n2024-01-01T00:05:00Z,2\n")
    (series,) = load_csv(path)
    assert series.key == "latency" and series.metric == "latency_p95_ms"
    np.testing.assert_array_equal(series.values, [1.0, 2.0])
    assert series.source == str(path)


def test_csv_with_service_and_metric_columns(tmp_path: Path) -> None:
    text = "timestamp,value,service,metric\n" + "".join(
        f"2024-01-01 00:0{minute}:00,{minute},{service},{metric}\n"
        for service in ("orders", "cart")
        for metric in ("cpu_percent", "requests_per_s")
        for minute in range(3)
    )
    series = load_csv(write(tmp_path / "all.csv", text))
    assert [item.key for item in series] == [
        "cart/cpu_percent",
        "cart/requests_per_s",
        "orders/cpu_percent",
        "orders/requests_per_s",
    ]
    assert series[0].metric == "cpu_percent" and series[1].metric == "requests_per_s"
    np.testing.assert_array_equal(series[0].values, [0, 1, 2])


def test_csv_folder(tmp_path: Path) -> None:
    write(tmp_path / "a" / "x.csv", "timestamp,value\n2024-01-01,1\n")
    write(tmp_path / "b" / "y.csv", "timestamp,value\n2024-01-01,2\n")
    assert [item.key for item in load_csv(tmp_path)] == ["a/x", "b/y"]


def test_bad_cells_become_missing_for_validation_to_report(tmp_path: Path) -> None:
    (series,) = load_csv(write(tmp_path / "m.csv", "timestamp,value\nnot a time,1\n2024-01-01,abc\n2024-01-02,\n"))
    assert np.isnat(series.timestamps[0])
    assert np.isnan(series.values[1]) and np.isnan(series.values[2])


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "the file is empty"),
        ("timestamp,value\n", "the file has a header but no rows"),
        ("time,val\n2024-01-01,1\n", "missing column"),
    ],
)
def test_structural_bad_input_names_the_file(tmp_path: Path, content: str, problem: str) -> None:
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(DataError, match=problem) as error:
        load_csv(path)
    assert error.value.source == str(path)


def test_missing_file_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        load_csv(tmp_path / "nope.csv")
    with pytest.raises(DataError, match=r"holds no \.csv file"):
        load_csv(tmp_path)
    with pytest.raises(DataError, match="folder not found"):
        load_nab(tmp_path / "nope")


def test_series_key_parts() -> None:
    series = Series("cat/name", np.array([], dtype="datetime64[ns]"), np.array([]))
    assert (series.category, series.name) == ("cat", "name")
