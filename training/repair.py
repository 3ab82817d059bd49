"""The one repair applied to loaded data: re-spacing a clock shift.

When a clock jumps forward (daylight saving time), some exporters stamp every sample
of the skipped hour with the time after the jump: a run of ``r`` identical timestamps
that comes at least ``r`` steps after the previous timestamp, where the previous and
the next timestamps are ``r + 1`` steps apart. Those rows are in order and complete; only their stamps are
wrong, so they are spread evenly over that interval. Any other duplicate or
out-of-order timestamp is left alone for validation to reject.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from training.series import Series


def respace_clock_shifts(series: Series) -> tuple[Series, list[str]]:
    """The series with clock-shift runs re-spaced, and one note per repair."""
    stamps = series.timestamps.astype("datetime64[ns]").astype(np.int64)
    if len(stamps) < 4 or np.isnat(series.timestamps).any():
        return series, []
    deltas = np.diff(stamps)
    step = float(np.median(deltas[deltas > 0])) if (deltas > 0).any() else 0.0
    if step <= 0:
        return series, []
    fixed, notes = stamps.copy(), []
    for start, end in _equal_runs(stamps):
        if start == 0 or end >= len(stamps):
            continue
        run = end - start
        gap_before = (stamps[start] - stamps[start - 1]) / step
        span = (stamps[end] - stamps[start - 1]) / step
        if gap_before >= run - 0.5 and abs(span - (run + 1)) <= 0.5:
            fixed[start:end] = np.linspace(stamps[start - 1], stamps[end], end - start + 2)[1:-1].astype(np.int64)
            notes.append(
                f"{series.source}: lines {start + 2}-{end + 1} share one timestamp after a gap "
                f"of the same length (a clock shift); re-spaced evenly"
            )
    if not notes:
        return series, []
    return replace(series, timestamps=fixed.astype("datetime64[ns]")), notes


def _equal_runs(stamps: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index ranges of two or more consecutive equal timestamps."""
    same = np.flatnonzero(np.diff(stamps) == 0)
    runs: list[tuple[int, int]] = []
    for index in same:
        if runs and runs[-1][1] == index + 1:
            runs[-1] = (runs[-1][0], int(index) + 2)
        else:
            runs.append((int(index), int(index) + 2))
    return runs
