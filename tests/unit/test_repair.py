"""The clock-shift repair re-spaces exactly that pattern and nothing else."""

from __future__ import annotations

import numpy as np

from training.repair import respace_clock_shifts
from training.series import Series


def stamps(minutes: list[int]) -> np.ndarray:
    return np.datetime64("2024-03-10T00:00", "ns") + np.array(minutes) * np.timedelta64(1, "m")


def test_run_of_equal_stamps_after_a_matching_gap_is_respaced() -> None:
    # 0, 5 then a 15-minute gap to 20 where three rows share the stamp 20, then 25
    minutes = [0, 5, 20, 20, 20, 25, 30]
    fixed, notes = respace_clock_shifts(Series("a/b", stamps(minutes), np.arange(7.0), source="b.csv"))
    np.testing.assert_array_equal(fixed.timestamps, stamps([0, 5, 10, 15, 20, 25, 30]))
    assert len(notes) == 1 and "b.csv: lines 4-6" in notes[0]


def test_other_duplicates_are_left_for_validation() -> None:
    minutes = [0, 5, 10, 10, 15, 20]
    series = Series("a/b", stamps(minutes), np.arange(6.0))
    fixed, notes = respace_clock_shifts(series)
    assert notes == [] and fixed is series


def test_a_repeated_row_in_place_of_a_missing_one_is_not_a_clock_shift() -> None:
    minutes = [0, 5, 10, 10, 20, 25]  # the row at 15 was replaced by a copy of the row at 10
    series = Series("a/b", stamps(minutes), np.arange(6.0))
    assert respace_clock_shifts(series)[1] == []
