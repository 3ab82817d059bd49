"""The anomaly detector: a causal convolutional predictor, a level test and two seasonal
tests, each turned into an anomaly likelihood, reported at the onset of a surprise.

Scoring a series is one vectorised causal pass, and the value at point ``t`` depends
only on points ``<= t``, so the same code scores a live stream:

1. the series is standardised online (exponentially weighted mean and spread of the
   points before ``t``), so the detector adapts to each series' level and units;
2. a dilated causal convolution network (receptive field ``2**levels`` points, more
   than a day at 5-minute steps) predicts each point's mean and spread from the points
   before it; the prediction surprise is the absolute error in predicted spreads;
3. the level surprise is the point's distance from the mean of the ``level_window``
   points before it, in their standard deviations (the windowed Gaussian test);
4. the seasonal tests measure the point's distance from the range of values around the
   same phase (``season`` steps per season, give or take a tolerance) in each of the
   last ``seasons`` seasons, in units of its own earlier typical value: the median over
   seasons is the shape test, the minimum (the closest season) tells whether any
   earlier season explains the point;
5. the anomaly likelihood of each surprise is the z-score of its recent mean
   (``short_window`` points for the prediction, ``shape_window`` for the shape, the
   point itself otherwise) of ``log(1 + surprise)`` against the mean and spread of all
   earlier values; the prediction and level z-scores count only as far as no earlier
   season explains the point (their maximum is capped by the closest-season z-score),
   and the larger of that and the shape z-score, as a Gaussian tail ``-log10 P``, is
   squashed into [0, 1);
6. a score only stands when it is a new high over the last ``novelty_window`` points,
   so a long anomaly is reported once at its onset instead of at every point.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn


@dataclass(frozen=True)
class DetectorConfig:
    """Every hyperparameter of the detector; ``params.yaml`` holds the values."""

    channels: int = 16
    levels: int = 9  # receptive field 2**levels points
    standardise_span: int = 288
    short_window: int = 3
    level_window: int = 576
    novelty_window: int = 288
    min_history: int = 32
    season: int = 288  # steps per season: one day at 5-minute steps
    seasons: int = 5  # earlier seasons compared with
    shape_window: int = 6
    shape_tolerance: int = 2  # phase slack of the shape test, in steps
    phase_tolerance: int = 12  # phase slack of the seasonal explanation, in steps
    tail_scale: float = 5.0  # -log10 tail probability at which the score is 0.5
    epochs: int = 60
    batch_size: int = 8
    learning_rate: float = 3e-3
    seed: int = 11
    threshold: float = 0.99


class CausalPredictor(nn.Module):
    """Dilated causal convolutions (kernel 2, as linear maps of ``h[t - d]`` and ``h[t]``):
    output ``t`` sees inputs ``< t`` only."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        widths = [1] + [config.channels] * config.levels
        self.layers = nn.ModuleList(nn.Linear(2 * width, config.channels) for width in widths[:-1])
        self.out = nn.Linear(widths[-1], 2)
        self.dilations = [2**level for level in range(config.levels)]

    def forward(self, series: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``series`` (batch, length) -> predicted mean and log-spread of every point."""
        shifted = nn.functional.pad(series, (1, 0))[:, :-1]  # point t sees < t
        hidden = shifted.unsqueeze(-1)
        for layer, dilation in zip(self.layers, self.dilations, strict=True):
            delayed = nn.functional.pad(hidden, (0, 0, dilation, 0))[:, :-dilation]
            hidden = torch.relu(layer(torch.cat([delayed, hidden], dim=-1)))
        out = self.out(hidden)
        return shifted + out[..., 0], out[..., 1].clamp(-6.0, 6.0)


def standardise_online(values: np.ndarray, span: int) -> np.ndarray:
    """(x_t - mean of the past) / spread of the past, exponentially weighted, causal."""
    frame = pd.Series(np.asarray(values, dtype=np.float64))
    mean = frame.ewm(span=span, min_periods=1).mean().shift(1)
    spread = frame.diff().abs().ewm(span=span, min_periods=1).mean().shift(1)
    level = frame.abs().ewm(span=span, min_periods=1).mean().shift(1)
    floor = 1e-3 * level + 1e-6
    standard = (frame - mean) / np.maximum(spread.fillna(0.0), floor.fillna(1e-6))
    return standard.fillna(0.0).clip(-50.0, 50.0).to_numpy(np.float32)


def level_surprise(values: np.ndarray, window: int) -> np.ndarray:
    """Distance of each point from the mean of the ``window`` points before it, in their
    standard deviations."""
    frame = pd.Series(np.asarray(values, dtype=np.float64))
    past = frame.shift(1).rolling(window, min_periods=2)
    return ((frame - past.mean()).abs() / past.std().clip(lower=1e-9)).fillna(0.0).to_numpy()


def phase_distances(values: np.ndarray, season: int, seasons: int, tolerance: int) -> pd.DataFrame:
    """One column per earlier season ``k = 1..seasons``: the distance of each point from the
    range of the ``2 * tolerance + 1`` points around the same phase ``k`` seasons earlier
    (NaN before that season exists)."""
    if tolerance >= season:
        raise ValueError("the phase tolerance must be shorter than a season")
    frame = pd.Series(np.asarray(values, dtype=np.float64))
    around = frame.rolling(2 * tolerance + 1, min_periods=1)
    high, low = around.max(), around.min()
    lags = [season * k - tolerance for k in range(1, seasons + 1)]  # window end, > 0 steps back
    return pd.DataFrame(
        {lag: np.maximum(frame - high.shift(lag), low.shift(lag) - frame).clip(lower=0.0) for lag in lags}
    )


def relative_to_past(distance: pd.Series, span: int) -> np.ndarray:
    """Each distance in units of the exponentially weighted mean of the distances before it."""
    typical = distance.ewm(span=span, min_periods=1, ignore_na=True).mean().shift(1)
    return (distance / typical.clip(lower=1e-9)).to_numpy()


def likelihood_z(surprise: np.ndarray, short: int) -> np.ndarray:
    """z-score of the mean log-surprise over the last ``short`` points against the mean
    and spread of every earlier log-surprise."""
    frame = pd.Series(np.log1p(surprise.astype(np.float64)))
    recent = frame.rolling(short, min_periods=1).mean()
    history = frame.shift(short).expanding(min_periods=short)
    z = (recent - history.mean()) / history.std().clip(lower=1e-3)
    return z.fillna(0.0).to_numpy()


def shape_z(values: np.ndarray, config: DetectorConfig) -> np.ndarray:
    """Likelihood z of the recent distance from the typical earlier seasons (the median
    over seasons), for changes of the seasonal shape."""
    distances = phase_distances(values, config.season, config.seasons, config.shape_tolerance)
    return likelihood_z(relative_to_past(distances.median(axis=1), config.season), config.shape_window)


def unseen_z(values: np.ndarray, config: DetectorConfig) -> np.ndarray:
    """Likelihood z of the distance from the closest earlier season (the minimum over
    seasons); infinite while no season is in the past, as nothing explains the point."""
    distance = phase_distances(values, config.season, config.seasons, config.phase_tolerance).min(axis=1)
    z = likelihood_z(relative_to_past(distance, config.season), 1)
    return np.where(distance.isna(), np.inf, z)


def tail_score(z: np.ndarray, scale: float) -> np.ndarray:
    """Gaussian upper tail of ``z`` as ``-log10 P``, squashed into [0, 1) without saturating."""
    neg_log_tail = -torch.special.log_ndtr(torch.from_numpy(-z)).numpy() / np.log(10.0)
    return np.asarray(neg_log_tail / (neg_log_tail + scale))


def keep_new_highs(scores: np.ndarray, window: int) -> np.ndarray:
    """Zero every score that is not above the highest score of the previous ``window`` points."""
    frame = pd.Series(scores)
    previous_high = frame.shift(1).rolling(window, min_periods=1).max().fillna(0.0)
    return np.where(frame > previous_high, scores, 0.0)


class Detector:
    """The trained predictor, the scoring rule around it and the chosen threshold."""

    def __init__(self, config: DetectorConfig, net: CausalPredictor | None = None) -> None:
        self.config = config
        self.net = net if net is not None else CausalPredictor(config)

    def surprise(self, values: np.ndarray) -> np.ndarray:
        standard = torch.from_numpy(standardise_online(values, self.config.standardise_span))
        with torch.inference_mode():
            mean, log_spread = self.net.eval()(standard.unsqueeze(0))
        return ((standard - mean[0]).abs() / log_spread[0].exp()).numpy()

    def score(self, values: np.ndarray) -> np.ndarray:
        """Anomaly score in [0, 1] for every point, using only the points before it."""
        config = self.config
        prediction = likelihood_z(self.surprise(values), config.short_window)
        level = likelihood_z(level_surprise(values, config.level_window), 1)
        local = np.minimum(np.maximum(prediction, level), unseen_z(values, config))
        score = tail_score(np.maximum(local, shape_z(values, config)), config.tail_scale)
        score[: config.min_history] = 0.0  # too little past to judge; must not mask what follows
        return keep_new_highs(score, config.novelty_window)

    def with_threshold(self, threshold: float) -> Detector:
        config = DetectorConfig(**{**asdict(self.config), "threshold": float(threshold)})
        return Detector(config, self.net)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(asdict(self.config), indent=2))
        torch.save(self.net.state_dict(), directory / "net.pt")

    @classmethod
    def load(cls, directory: Path) -> Detector:
        config = DetectorConfig(**json.loads((directory / "config.json").read_text()))
        net = CausalPredictor(config)
        net.load_state_dict(torch.load(directory / "net.pt", weights_only=True))
        return cls(config, net.eval())
