"""NAB (Numenta Anomaly Benchmark) scoring: the window-weighted detection score,
its normalisation against the null and perfect detectors, and NAB's threshold sweep.

The rules follow NAB's sweeper (the scorer and optimiser both run on it):

* The first ``min(floor(0.15 * n), 0.15 * 5000)`` rows of a file are a probation
  period: those rows are neither detections, misses nor false positives.
* Every row gets a weighted score ``S``. Inside a window whose last row is ``R`` and
  which spans ``W`` rows, row ``i`` sits at ``p = -(R - i + 1) / W`` (-1 at the first
  row, ``-1/W`` at the last) and ``S = tp * scaled_sigmoid(p) / scaled_sigmoid(-1)``,
  so a detection on the first row of a window earns exactly ``tp``. Outside windows,
  ``S = -fp`` before the first window, else ``fp * scaled_sigmoid((i - R) / (W - 1))``
  for the most recent window that ended before ``i``.
* A window scores ``max(-fn, S of its earliest detected row)``, or ``-fn`` if nothing
  in it is detected; every detected row outside windows adds its ``S`` (always
  negative: near ``0`` just after a window, ``-fp`` far from it).
* A row is a detection when its anomaly score is ``>= threshold``.
* The corpus raw score is the sum over files; the normalised score is
  ``100 * (raw - null) / (perfect - null)`` with ``null`` the never-detecting
  detector (``-fn`` per window with a post-probation row) and ``perfect`` ``tp`` times
  the number of labelled windows, as NAB's normalisation counts them.
* The optimal threshold is the candidate (1.1, meaning "nothing detected", then every
  distinct anomaly score of a scored row) with the highest corpus raw score; ties go
  to the higher threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

PROBATION_FRACTION = 0.15
# NAB caps the probation period at this fraction of 5000 rows (i.e. 750 rows).
PROBATION_CAP_ROWS = 5000
# Threshold that detects nothing: the sweep's starting point (scores live in [0, 1]).
NO_DETECTION_THRESHOLD = 1.1
# Relative tolerance when comparing swept corpus scores for ties.
_TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Profile:
    """Weights of a NAB application profile: reward per detected window, cost per
    missed window, cost per false-positive row."""

    tp: float
    fn: float
    fp: float


PROFILES: dict[str, Profile] = {
    "standard": Profile(tp=1.0, fn=1.0, fp=0.11),
    "reward_low_FP_rate": Profile(tp=1.0, fn=1.0, fp=0.22),
    "reward_low_FN_rate": Profile(tp=1.0, fn=2.0, fp=0.11),
}


@dataclass(frozen=True)
class ScoredFile:
    """One series with a detector's anomaly scores and its labelled windows.

    ``timestamps`` must be non-decreasing (NAB's own files repeat a timestamp at a
    clock change); ``scores`` finite and in [0, 1];
    ``windows`` inclusive ``(start, end)`` pairs that do not overlap, each covering at
    least one row. On construction arrays become datetime64[ns] / float64 and windows
    are sorted.
    """

    key: str
    timestamps: np.ndarray
    scores: np.ndarray
    windows: tuple[tuple[np.datetime64, np.datetime64], ...] = field(default=())

    def __post_init__(self) -> None:
        timestamps = np.asarray(self.timestamps).astype("datetime64[ns]")
        scores = np.asarray(self.scores, dtype=np.float64)
        if timestamps.ndim != 1 or scores.ndim != 1 or timestamps.shape != scores.shape:
            raise ValueError(f"{self.key}: timestamps and scores must be 1-D and of equal length")
        if timestamps.size > 1 and not bool(np.all(timestamps[1:] >= timestamps[:-1])):
            raise ValueError(f"{self.key}: timestamps must be non-decreasing")
        if not bool(np.all(np.isfinite(scores))) or bool(np.any((scores < 0.0) | (scores > 1.0))):
            raise ValueError(f"{self.key}: anomaly scores must be finite and in [0, 1]")
        limits = _window_limits(self.windows)
        limits = limits[np.argsort(limits[:, 0], kind="stable")]
        if bool(np.any(limits[:, 1] < limits[:, 0])):
            raise ValueError(f"{self.key}: a window ends before it starts")
        if bool(np.any(limits[1:, 0] <= limits[:-1, 1])):
            raise ValueError(f"{self.key}: windows overlap")
        windows = tuple((start, end) for start, end in limits)
        object.__setattr__(self, "timestamps", timestamps)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "windows", windows)


@dataclass(frozen=True)
class CorpusScore:
    """A corpus scored under one profile at one threshold.

    ``tp``/``tn``/``fp``/``fn`` are NAB's row counts over scored (post-probation) rows:
    detected rows inside / undetected rows outside / detected rows outside / undetected
    rows inside windows. ``windows_detected`` of ``windows_scored`` windows (those with
    at least one post-probation row) have a detection. ``per_file`` maps each file key
    to its raw score.
    """

    threshold: float
    raw: float
    null: float
    perfect: float
    normalized: float
    tp: int
    tn: int
    fp: int
    fn: int
    windows_detected: int
    windows_scored: int
    windows_total: int
    per_file: dict[str, float]


def _window_limits(windows: Sequence[tuple[object, object]]) -> np.ndarray:
    """Windows as an ``(n, 2)`` datetime64[ns] array of inclusive (start, end)."""
    return np.asarray(list(windows), dtype="datetime64[ns]").reshape(-1, 2)


def probation_length(n_rows: int, fraction: float = PROBATION_FRACTION) -> int:
    """Number of leading rows NAB leaves unscored: min(floor(fraction*n), fraction*5000)."""
    return int(min(math.floor(fraction * n_rows), fraction * PROBATION_CAP_ROWS))


def scaled_sigmoid(position: np.ndarray | float) -> np.ndarray:
    """NAB's ``2*sigmoid(-5x) - 1``, and -1 for ``x > 3`` (far past a window)."""
    x = np.asarray(position, dtype=np.float64)
    far = x > 3.0
    near = np.where(far, 0.0, x)  # keeps exp() finite; the far rows are overwritten
    return np.where(far, -1.0, 2.0 / (1.0 + np.exp(5.0 * near)) - 1.0)


def window_labels(
    timestamps: np.ndarray, windows: Sequence[tuple[np.datetime64, np.datetime64]]
) -> np.ndarray:
    """0/1 label per row, 1 where ``start <= timestamp <= end`` for some window
    (timestamps increasing)."""
    ts = np.asarray(timestamps).astype("datetime64[ns]")
    limits = _window_limits(windows)
    labels = np.zeros(ts.shape[0], dtype=np.int64)
    lo = np.searchsorted(ts, limits[:, 0], side="left")
    hi = np.searchsorted(ts, limits[:, 1], side="right")
    for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
        labels[a:b] = 1
    return labels


@dataclass(frozen=True)
class _FileRows:
    """Per-row scoring inputs of one file, restricted to post-probation rows."""

    key: str
    scores: np.ndarray  # anomaly scores of scored rows
    weights: np.ndarray  # NAB's per-row S for the profile
    window: np.ndarray  # window index within the file, -1 outside every window
    n_windows: int  # labelled windows, probation included
    scored_windows: np.ndarray  # indices of windows with at least one scored row


def _window_bounds(f: ScoredFile) -> tuple[np.ndarray, np.ndarray]:
    """First and last row index of every window of ``f``.

    As in NAB, a window runs from the first row at its start to the first row at its
    end (a repeated end timestamp closes the window at its first occurrence); a limit
    that is not a timestamp of the file snaps inwards to the nearest row.
    """
    ts = f.timestamps
    limits = _window_limits(f.windows)
    starts, ends = limits[:, 0], limits[:, 1]
    first = np.searchsorted(ts, starts, side="left").astype(np.int64)
    last = np.searchsorted(ts, ends, side="left").astype(np.int64)
    at_end = last < ts.size
    at_end[at_end] = ts[last[at_end]] == ends[at_end]
    last = np.where(at_end, last, last - 1)
    empty = last < first
    if bool(np.any(empty)):
        start, end = f.windows[int(np.flatnonzero(empty)[0])]
        raise ValueError(f"{f.key}: window ({start}, {end}) covers no row")
    return first, last


def _file_rows(f: ScoredFile, profile: Profile, probation_fraction: float) -> _FileRows:
    n = f.scores.shape[0]
    first, last = _window_bounds(f)
    window = np.full(n, -1, dtype=np.int64)
    weights = np.full(n, -profile.fp)  # before any window: a full false-positive cost
    if first.size:
        idx = np.arange(n, dtype=np.int64)
        # Window of each row: the last one starting at or before it, unless it has ended.
        k = np.maximum(np.searchsorted(first, idx, side="right") - 1, 0)
        inside = (idx >= first[k]) & (idx <= last[k])
        window[inside] = k[inside]

        kin = k[inside]
        width = (last[kin] - first[kin] + 1).astype(np.float64)
        position = -(last[kin] - idx[inside] + 1) / width
        weights[inside] = scaled_sigmoid(position) * profile.tp / scaled_sigmoid(-1.0)

        # After a window: distance past the most recent window that has ended, in units
        # of that window's span. A one-row window has no span: count the row as far
        # away (S = -fp).
        prev = np.searchsorted(last, idx, side="left") - 1
        after = ~inside & (prev >= 0)
        pw = prev[after]
        span = (last[pw] - first[pw]).astype(np.float64)
        past = (idx[after] - last[pw]).astype(np.float64)
        position_past = np.divide(past, span, out=np.full(past.shape, np.inf), where=span > 0)
        weights[after] = scaled_sigmoid(position_past) * profile.fp

    start = probation_length(n, probation_fraction)
    scored_window = window[start:]
    return _FileRows(
        key=f.key,
        scores=f.scores[start:],
        weights=weights[start:],
        window=scored_window,
        n_windows=int(first.size),
        scored_windows=np.unique(scored_window[scored_window >= 0]),
    )


def _prepare(
    files: Sequence[ScoredFile], profile: Profile, probation_fraction: float
) -> list[_FileRows]:
    keys = [f.key for f in files]
    if len(set(keys)) != len(keys):
        raise ValueError("file keys must be unique within a corpus")
    return [_file_rows(f, profile, probation_fraction) for f in files]


def _normalize(raw: float, null: float, perfect: float) -> float:
    if perfect == null:
        return float("nan")
    return 100.0 * (raw - null) / (perfect - null)


def _score_rows(rows: list[_FileRows], profile: Profile, threshold: float) -> CorpusScore:
    per_file: dict[str, float] = {}
    tp = tn = fp = fn = 0
    detected_windows = scored_windows = total_windows = 0
    for r in rows:
        detected = r.scores >= threshold
        in_window = r.window >= 0
        fp_rows = detected & ~in_window
        tp_rows = detected & in_window
        # Earliest detected row per window (rows are in time order).
        hit_windows, first_hit = np.unique(r.window[tp_rows], return_index=True)
        hit_weights = r.weights[tp_rows][first_hit]
        window_part = float(np.sum(np.maximum(-profile.fn, hit_weights)))
        window_part -= profile.fn * (r.scored_windows.size - hit_windows.size)
        per_file[r.key] = float(np.sum(r.weights[fp_rows])) + window_part

        tp += int(np.count_nonzero(tp_rows))
        fp += int(np.count_nonzero(fp_rows))
        fn += int(np.count_nonzero(in_window & ~detected))
        tn += int(np.count_nonzero(~in_window & ~detected))
        detected_windows += int(hit_windows.size)
        scored_windows += int(r.scored_windows.size)
        total_windows += r.n_windows

    raw = float(sum(per_file.values()))
    null = -profile.fn * scored_windows
    perfect = profile.tp * total_windows
    return CorpusScore(
        threshold=float(threshold),
        raw=raw,
        null=null,
        perfect=perfect,
        normalized=_normalize(raw, null, perfect),
        tp=tp,
        tn=tn,
        fp=fp,
        fn=fn,
        windows_detected=detected_windows,
        windows_scored=scored_windows,
        windows_total=total_windows,
        per_file=per_file,
    )


def score_corpus(
    files: Sequence[ScoredFile],
    profile: Profile,
    threshold: float,
    *,
    probation_fraction: float = PROBATION_FRACTION,
) -> CorpusScore:
    """Score every file at ``threshold`` (detection: anomaly score >= threshold)."""
    return _score_rows(_prepare(files, profile, probation_fraction), profile, threshold)


def sweep_thresholds(
    files: Sequence[ScoredFile],
    profile: Profile,
    *,
    probation_fraction: float = PROBATION_FRACTION,
) -> tuple[np.ndarray, np.ndarray]:
    """Corpus raw score at every candidate threshold, in one pass over the sorted scores.

    Returns ``(thresholds, raw_scores)``, thresholds descending: 1.1 (nothing detected)
    then each distinct anomaly score of a post-probation row.
    """
    rows = _prepare(files, profile, probation_fraction)
    scores = np.concatenate([r.scores for r in rows]) if rows else np.zeros(0)
    weights = np.concatenate([r.weights for r in rows]) if rows else np.zeros(0)
    # Global window ids: offset each file's window indices.
    offsets = np.cumsum([0] + [r.n_windows for r in rows])
    window = np.concatenate(
        [np.where(r.window >= 0, r.window + off, -1) for r, off in zip(rows, offsets[:-1], strict=True)]
        or [np.zeros(0, dtype=np.int64)]
    )
    base = -profile.fn * sum(int(r.scored_windows.size) for r in rows)
    if scores.size == 0:
        return np.array([NO_DETECTION_THRESHOLD]), np.array([base])

    order = np.argsort(-scores, kind="stable")  # highest anomaly score first
    s_sorted = scores[order]
    w_sorted = window[order]
    delta = np.where(w_sorted < 0, weights[order], 0.0)  # each FP row adds its S

    # A window's part is max(-fn, S of its earliest detected row); S falls with the row
    # index inside a window, so track the running minimum row index per window as the
    # threshold drops. Rows are grouped by window, in sweep order within a group.
    pos = np.flatnonzero(w_sorted >= 0)
    if pos.size:
        win = w_sorted[pos]
        row = order[pos]  # global row index (rows are concatenated in time order)
        grouped = np.lexsort((pos, win))
        win, row, pos = win[grouped], row[grouped], pos[grouped]
        # Group-wise cumulative minimum in one pass: shifting each later group below all
        # earlier ones makes the running minimum restart at every group.
        big = np.int64(scores.size + 1)
        earliest = np.minimum.accumulate(row - win * big) + win * big
        part = np.maximum(-profile.fn, weights[earliest])
        new_group = np.ones(pos.size, dtype=bool)
        new_group[1:] = win[1:] != win[:-1]
        previous = np.where(new_group, -profile.fn, np.roll(part, 1))
        delta[pos] = part - previous

    running = base + np.cumsum(delta)
    # The score at a threshold counts every row with an anomaly score >= it: read the
    # running total at the last row of each block of equal scores.
    block_end = np.ones(s_sorted.size, dtype=bool)
    block_end[:-1] = s_sorted[:-1] != s_sorted[1:]
    thresholds = np.concatenate([[NO_DETECTION_THRESHOLD], s_sorted[block_end]])
    raw_scores = np.concatenate([[base], running[block_end]])
    return thresholds, raw_scores


def optimize_threshold(
    files: Sequence[ScoredFile],
    profile: Profile,
    *,
    probation_fraction: float = PROBATION_FRACTION,
) -> tuple[float, CorpusScore]:
    """NAB's threshold: the candidate with the highest corpus raw score for ``profile``
    (the highest such threshold on ties), with the corpus scored at it."""
    thresholds, raw_scores = sweep_thresholds(files, profile, probation_fraction=probation_fraction)
    best = float(np.max(raw_scores))
    tolerance = _TIE_TOLERANCE * max(1.0, abs(best))
    threshold = float(thresholds[int(np.argmax(raw_scores >= best - tolerance))])
    return threshold, score_corpus(files, profile, threshold, probation_fraction=probation_fraction)
