"""NAB-style evaluation of an anomaly scorer over a set of labelled series."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from training.nab_scoring import PROFILES, ScoredFile, optimize_threshold, score_corpus
from training.series import Series

Scorer = Callable[[np.ndarray], np.ndarray]


def score_files(scorer: Scorer, series: Sequence[Series]) -> list[ScoredFile]:
    return [ScoredFile(item.key, item.timestamps, scorer(item.values), item.windows) for item in series]


def nab_report(files: Sequence[ScoredFile], threshold: float) -> dict[str, Any]:
    """Per profile: the normalised score at the detector's own threshold and at NAB's
    corpus-optimised threshold (the protocol behind NAB's published scoreboard)."""
    report: dict[str, Any] = {}
    for name, profile in PROFILES.items():
        own = score_corpus(files, profile, threshold)
        best_threshold, best = optimize_threshold(files, profile)
        report[name] = {
            "score": best.normalized,
            "threshold": best_threshold,
            "own_threshold_score": own.normalized,
            "own_threshold": threshold,
            "tp": best.tp,
            "fp": best.fp,
            "fn": best.fn,
        }
    return report


def best_threshold(files: Sequence[ScoredFile], fallback: float) -> float:
    """The threshold that maximises the standard profile on labelled data, else ``fallback``."""
    if not any(item.windows for item in files):
        return fallback
    threshold, _ = optimize_threshold(files, PROFILES["standard"])
    return float(min(threshold, 1.0))


def windowed_gaussian(values: np.ndarray, window: int = 288) -> np.ndarray:
    """The baseline detector (NAB's "windowed Gaussian"): tail probability of each point
    against the mean and spread of the ``window`` points before it."""
    import pandas as pd
    import torch

    frame = pd.Series(np.asarray(values, dtype=np.float64))
    past = frame.shift(1).rolling(window, min_periods=2)
    z = ((frame - past.mean()).abs() / past.std().clip(lower=1e-9)).fillna(0.0)
    return 2 * torch.special.ndtr(torch.from_numpy(z.to_numpy())).numpy() - 1
