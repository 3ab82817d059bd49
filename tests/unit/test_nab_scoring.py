"""Unit tests for training.nab_scoring, on small hand-made corpora.

Hand arithmetic uses scaled_sigmoid(x) = 2*sigmoid(-5x) - 1 = tanh(-2.5x), so
scaled_sigmoid(-1) = tanh(2.5) = 0.9866143. Inside a window of W rows ending at row R,
row i earns tp * tanh(2.5*(R-i+1)/W) / tanh(2.5); a false positive d rows after a
window spanning W rows costs fp * tanh(2.5*d/(W-1)) (capped at fp once d/(W-1) > 3),
and a false positive before any window costs fp.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from training.nab_scoring import (
    NO_DETECTION_THRESHOLD,
    PROFILES,
    Profile,
    ScoredFile,
    optimize_threshold,
    probation_length,
    scaled_sigmoid,
    score_corpus,
    window_labels,
)

STANDARD = PROFILES["standard"]
LOW_FP = PROFILES["reward_low_FP_rate"]
LOW_FN = PROFILES["reward_low_FN_rate"]
T0 = np.datetime64("2024-01-01T00:00:00", "ns")
STEP = np.timedelta64(5, "m")
TANH_2_5 = math.tanh(2.5)  # 0.9866143


def _timestamps(n: int) -> np.ndarray:
    return T0 + np.arange(n) * STEP


def _file(
    key: str,
    n: int,
    windows: Sequence[tuple[int, int]] = (),
    detections: Sequence[int] = (),
    scores: np.ndarray | None = None,
) -> ScoredFile:
    """A file of ``n`` rows; ``windows`` as inclusive row ranges; detected rows score 1."""
    ts = _timestamps(n)
    if scores is None:
        scores = np.zeros(n)
        scores[list(detections)] = 1.0
    return ScoredFile(key, ts, scores, tuple((ts[a], ts[b]) for a, b in windows))


def _raw(files: Sequence[ScoredFile], profile: Profile = STANDARD, threshold: float = 0.5) -> float:
    return score_corpus(files, profile, threshold).raw


def test_profiles_have_nab_weights() -> None:
    assert {
        "standard": Profile(tp=1.0, fn=1.0, fp=0.11),
        "reward_low_FP_rate": Profile(tp=1.0, fn=1.0, fp=0.22),
        "reward_low_FN_rate": Profile(tp=1.0, fn=2.0, fp=0.11),
    } == PROFILES


def test_probation_length() -> None:
    assert probation_length(20) == 3  # floor(0.15 * 20) = 3
    assert probation_length(40) == 6  # floor(0.15 * 40) = 6
    assert probation_length(4032) == 604  # floor(604.8)
    assert probation_length(10000) == 750  # min(1500, 0.15 * 5000)


def test_scaled_sigmoid_values() -> None:
    # -1 (window start): 2*sigmoid(5) - 1 = 0.9866143; 0: 0; 1: -0.9866143; > 3: -1.
    values = scaled_sigmoid(np.array([-1.0, 0.0, 1.0, 3.5]))
    np.testing.assert_allclose(values, [0.9866143, 0.0, -0.9866143, -1.0], atol=1e-7)


def test_window_labels_inclusive() -> None:
    ts = _timestamps(10)
    # rows 2..4, then a window whose limits fall between rows 6 and 8 (covers row 7 only)
    windows = ((ts[2], ts[4]), (ts[6] + np.timedelta64(1, "m"), ts[7] + np.timedelta64(1, "m")))
    labels = window_labels(ts, windows)
    assert labels.tolist() == [0, 0, 1, 1, 1, 0, 0, 1, 0, 0]


def test_detection_at_window_start_earns_full_tp() -> None:
    f = _file("a", 20, windows=[(10, 14)], detections=[10])
    result = score_corpus([f], STANDARD, 0.5)
    # W = 5, R = 14, i = 10: position -(14-10+1)/5 = -1 -> tp * tanh(2.5)/tanh(2.5) = 1
    assert result.raw == pytest.approx(1.0)
    # scored rows 3..19 (17): window rows 10..14 -> tp 1 detected, fn 4 undetected; tn 12
    assert (result.tp, result.fn, result.fp, result.tn) == (1, 4, 0, 12)
    assert (result.windows_detected, result.windows_scored, result.windows_total) == (1, 1, 1)
    assert result.per_file == {"a": pytest.approx(1.0)}


def test_later_detection_earns_less_and_only_the_earliest_counts() -> None:
    # i = 12: position -(14-12+1)/5 = -0.6 -> tanh(1.5)/tanh(2.5) = 0.905148/0.986614 = 0.917428
    middle = math.tanh(1.5) / TANH_2_5
    assert middle == pytest.approx(0.917428, abs=1e-6)
    assert _raw([_file("a", 20, [(10, 14)], [12])]) == pytest.approx(middle)
    # rows 12 and 13 detected: only the earliest (12) counts
    assert _raw([_file("a", 20, [(10, 14)], [12, 13])]) == pytest.approx(middle)
    # i = 14 (last row): position -1/5 -> tanh(0.5)/tanh(2.5) = 0.462117/0.986614 = 0.468387
    assert _raw([_file("a", 20, [(10, 14)], [14])]) == pytest.approx(0.468387, abs=1e-6)


def test_missed_window_costs_fn() -> None:
    f = _file("a", 20, windows=[(10, 14)])
    assert _raw([f], STANDARD) == pytest.approx(-1.0)  # -fn = -1
    assert _raw([f], LOW_FN) == pytest.approx(-2.0)  # -fn = -2
    result = score_corpus([f], STANDARD, 0.5)
    assert (result.tp, result.fn, result.windows_detected) == (0, 5, 0)


def test_false_positive_before_any_window_costs_full_fp() -> None:
    # no window: one detection at row 5 (after probation, rows 0..2) -> -fp = -0.11
    result = score_corpus([_file("a", 20, detections=[5])], STANDARD, 0.5)
    assert result.raw == pytest.approx(-0.11)
    assert (result.fp, result.tn) == (1, 16)
    # with a later window, the FP still has no preceding window: -fn - fp = -1 - 0.11
    assert _raw([_file("a", 20, [(10, 14)], [5])]) == pytest.approx(-1.11)


def test_false_positive_just_after_window_costs_less_than_far_away() -> None:
    # window rows 10..14 detected at its start (+1); span W-1 = 4
    def fp_cost(row: int) -> float:
        return _raw([_file("a", 40, [(10, 14)], [10, row])]) - 1.0

    # row 15: d/(W-1) = 1/4 -> -0.11 * tanh(0.625) = -0.11 * 0.5546 = -0.0610060
    assert fp_cost(15) == pytest.approx(-0.0610060, abs=1e-7)
    # row 25: 11/4 = 2.75 -> -0.11 * tanh(6.875) = -0.1099998
    assert fp_cost(25) == pytest.approx(-0.11 * math.tanh(6.875))
    # row 30: 16/4 = 4 > 3 -> -0.11 exactly
    assert fp_cost(30) == pytest.approx(-0.11)
    assert fp_cost(15) > fp_cost(25) > fp_cost(30)


def test_probation_rows_are_not_scored() -> None:
    # n = 20: rows 0..2 are probation; detections there cost nothing and count nowhere
    result = score_corpus([_file("a", 20, detections=[0, 1, 2])], STANDARD, 0.5)
    assert result.raw == 0.0
    assert (result.fp, result.tn) == (0, 17)


def test_window_inside_probation_is_neither_hit_nor_miss() -> None:
    # n = 40: probation rows 0..5; window rows 1..4 lies inside it
    missed = score_corpus([_file("a", 40, [(1, 4)])], STANDARD, 0.5)
    hit = score_corpus([_file("a", 40, [(1, 4)], [2])], STANDARD, 0.5)
    assert missed.raw == 0.0 and hit.raw == 0.0
    # the null score skips it, but NAB's perfect score counts every labelled window
    assert (missed.null, missed.perfect, missed.windows_scored, missed.windows_total) == (0.0, 1.0, 0, 1)
    # it still is the preceding window for a later FP: row 6, d = 6 - 4 = 2, span 3
    # -> -0.11 * tanh(2.5 * 2/3) = -0.11 * 0.931109 = -0.1024220
    assert _raw([_file("a", 40, [(1, 4)], [6])]) == pytest.approx(-0.1024220, abs=1e-7)


def test_window_straddling_probation_scores_from_first_scored_detection() -> None:
    # n = 40: probation rows 0..5; window rows 4..8 (W = 5). Row 4 is in probation, so the
    # earliest scored detection is row 7: position -(8-7+1)/5 = -0.4
    # -> tanh(1.0)/tanh(2.5) = 0.761594/0.986614 = 0.771927
    assert _raw([_file("a", 40, [(4, 8)], [4, 7])]) == pytest.approx(0.771927, abs=1e-6)


def test_normalisation_null_is_zero_and_perfect_is_hundred() -> None:
    windows = {"a": [(10, 14)], "b": [(20, 29)], "c": []}

    def corpus(detect_starts: Sequence[str]) -> list[ScoredFile]:
        return [
            _file(key, 40, rows, [rows[0][0]] if key in detect_starts and rows else []) for key, rows in windows.items()
        ]

    # null: 2 windows missed -> raw = null = -2; perfect = 2 windows * tp = 2
    null = score_corpus(corpus([]), STANDARD, 0.5)
    assert (null.raw, null.null, null.perfect, null.normalized) == (-2.0, -2.0, 2.0, 0.0)
    # detecting every window on its first row: raw = 1 + 1 = 2 -> 100
    perfect = score_corpus(corpus(["a", "b"]), STANDARD, 0.5)
    assert perfect.raw == pytest.approx(2.0)
    assert perfect.normalized == pytest.approx(100.0)
    # one hit, one miss: raw = 1 - 1 = 0 -> 100 * (0 + 2) / (2 + 2) = 50
    assert score_corpus(corpus(["a"]), STANDARD, 0.5).normalized == pytest.approx(50.0)
    assert perfect.per_file == {"a": pytest.approx(1.0), "b": pytest.approx(1.0), "c": 0.0}


def test_corpus_without_windows_has_undefined_normalised_score() -> None:
    result = score_corpus([_file("a", 20, detections=[5])], STANDARD, 0.5)
    assert (result.null, result.perfect) == (0.0, 0.0)
    assert math.isnan(result.normalized)


def test_profiles_weigh_the_same_detections_differently() -> None:
    # n = 40: FP at row 8 (before any window), window 20..24 hit at its start, window
    # 30..34 missed
    f = _file("a", 40, [(20, 24), (30, 34)], [8, 20])
    standard = score_corpus([f], STANDARD, 0.5)
    low_fp = score_corpus([f], LOW_FP, 0.5)
    low_fn = score_corpus([f], LOW_FN, 0.5)
    assert standard.raw == pytest.approx(-0.11)  # 1 - 0.11 - 1
    assert low_fp.raw == pytest.approx(-0.22)  # 1 - 0.22 - 1
    assert low_fn.raw == pytest.approx(-1.11)  # 1 - 0.11 - 2
    assert standard.normalized == pytest.approx(47.25)  # 100 * (-0.11 + 2) / (2 + 2)
    assert low_fp.normalized == pytest.approx(44.5)  # 100 * (-0.22 + 2) / (2 + 2)
    assert low_fn.normalized == pytest.approx(100 * 2.89 / 6)  # null -4, perfect 2: 48.1667


def test_detection_is_score_at_or_above_threshold() -> None:
    scores = np.zeros(20)
    scores[10] = 0.7
    f = _file("a", 20, [(10, 14)], scores=scores)
    assert _raw([f], threshold=0.7) == pytest.approx(1.0)  # 0.7 >= 0.7: detected
    assert _raw([f], threshold=0.7000001) == pytest.approx(-1.0)  # missed
    assert _raw([f], threshold=NO_DETECTION_THRESHOLD) == pytest.approx(-1.0)


def test_repeated_end_timestamp_closes_window_at_its_first_row() -> None:
    # rows 14 and 15 share a timestamp (a clock change in the source data); the window
    # ends at that timestamp, so it runs 10..14 and row 15 is a false positive 1 row past it
    ts = _timestamps(40)
    ts[15:] -= STEP
    scores = np.zeros(40)
    scores[[10, 15]] = 1.0
    f = ScoredFile("a", ts, scores, ((ts[10], ts[14]),))
    # +1 for the window, -0.11 * tanh(2.5 * 1/4) = -0.0610060 for row 15
    assert _raw([f]) == pytest.approx(1.0 - 0.0610060, abs=1e-7)
    # the row labels, like NAB's label files, mark both rows with that timestamp
    assert window_labels(ts, f.windows)[13:17].tolist() == [1, 1, 1, 0]


def test_optimize_threshold_hand_made_case() -> None:
    # n = 40, window 20..24. Scores: row 30 (far past the window) 0.95, row 20 0.9, rest 0.1.
    scores = np.full(40, 0.1)
    scores[30], scores[20] = 0.95, 0.9
    f = _file("a", 40, [(20, 24)], scores=scores)
    # candidates: 1.1 -> -1 (miss); 0.95 -> -1 - 0.11*tanh(2.5 * 6/4) = -1 - 0.11*0.998894
    # = -1.109878; 0.9 -> 1 - 0.109878 = 0.890122; 0.1 -> adds 14 FPs before the window (-1.54) and more
    # after it, so 0.9 wins
    threshold, result = optimize_threshold([f], STANDARD)
    assert threshold == 0.9
    assert result.raw == pytest.approx(1.0 - 0.11 * math.tanh(3.75))
    assert result.raw == pytest.approx(0.890122, abs=1e-6)
    assert result.threshold == 0.9
    # nothing worth detecting: the sweep keeps the "detect nothing" threshold
    nothing, empty = optimize_threshold([_file("b", 40, detections=[10])], STANDARD)
    assert nothing == NO_DETECTION_THRESHOLD and empty.raw == 0.0


def _random_corpus(seed: int) -> list[ScoredFile]:
    rng = np.random.default_rng(seed)
    files = []
    for k, (n, windows) in enumerate([(60, [(20, 27), (40, 44)]), (50, [(30, 39)]), (40, [])]):
        scores = np.round(rng.random(n) ** 3, 2)  # coarse grid: many tied scores
        for a, b in windows:
            scores[a : b + 1] = np.maximum(scores[a : b + 1], np.round(rng.random(b - a + 1), 2))
        files.append(_file(f"f{k}", n, windows, scores=scores))
    return files


@pytest.mark.parametrize("profile_name", list(PROFILES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_optimize_threshold_matches_brute_force(profile_name: str, seed: int) -> None:
    profile = PROFILES[profile_name]
    files = _random_corpus(seed)
    # brute force: score the corpus at 1.1 and at every distinct post-probation score,
    # highest threshold first; keep the first maximum (ties go to the higher threshold)
    scored = np.concatenate([f.scores[probation_length(f.scores.size) :] for f in files])
    candidates = [NO_DETECTION_THRESHOLD, *sorted(set(scored.tolist()), reverse=True)]
    raws = [score_corpus(files, profile, t).raw for t in candidates]
    best = max(raws)
    brute = next(t for t, r in zip(candidates, raws, strict=True) if r >= best - 1e-9)

    threshold, result = optimize_threshold(files, profile)
    assert threshold == brute
    assert result.raw == pytest.approx(best, abs=1e-9)
    assert result == score_corpus(files, profile, threshold)


def test_scored_file_validation() -> None:
    ts = _timestamps(10)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        ScoredFile("a", ts, np.full(10, 1.5))
    with pytest.raises(ValueError, match="overlap"):
        ScoredFile("a", ts, np.zeros(10), ((ts[1], ts[4]), (ts[4], ts[6])))
    with pytest.raises(ValueError, match="non-decreasing"):
        ScoredFile("a", ts[::-1], np.zeros(10))
    with pytest.raises(ValueError, match="unique"):
        score_corpus([_file("a", 10), _file("a", 10)], STANDARD, 0.5)
