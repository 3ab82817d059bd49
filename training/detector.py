"""The anomaly detector: a causal convolutional predictor plus an anomaly likelihood.

Scoring a series is one vectorised causal pass, and the value at point ``t`` depends
only on points ``<= t``, so the same code scores a live stream:

1. the series is standardised online (exponentially weighted mean and spread of the
   points before ``t``), so the detector adapts to each series' level and units;
2. a dilated causal convolution network predicts each point's mean and spread from
   the points before it; the surprise is the absolute error in predicted spreads;
3. the anomaly likelihood compares the mean surprise over the last few points with
   its distribution over a long past window; its Gaussian tail probability is the
   score in [0, 1];
4. a score only stands when it is a new high over the recent past, so a long
   anomaly is reported once at its onset instead of at every point.
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
    levels: int = 5  # receptive field 2**levels points
    standardise_span: int = 288
    short_window: int = 6
    long_window: int = 576
    novelty_window: int = 288
    epochs: int = 30
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


def anomaly_likelihood(surprise: np.ndarray, short: int, long: int) -> np.ndarray:
    """Tail probability of the recent mean surprise against its long-run distribution."""
    frame = pd.Series(surprise.astype(np.float64))
    recent = frame.rolling(short, min_periods=1).mean()
    history = frame.shift(short)
    history_mean = history.rolling(long, min_periods=short).mean()
    history_std = history.rolling(long, min_periods=short).std()
    z = (recent - history_mean) / np.maximum(history_std.fillna(1.0), 1e-3)
    likelihood = torch.special.ndtr(torch.from_numpy(z.fillna(0.0).to_numpy())).numpy()
    return np.asarray(likelihood)


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
        likelihood = anomaly_likelihood(
            self.surprise(values), self.config.short_window, self.config.long_window
        )
        return keep_new_highs(likelihood, self.config.novelty_window)

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
