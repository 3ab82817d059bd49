"""The load forecaster: one global, scale-free quantile network for every series.

A window of ``context`` past values is normalised by its last value (location) and
the mean absolute step-to-step change (scale), so the network sees the shape of the
recent past and not its units. Calendar features of the forecast origin (time of
day, day of week) are appended. The network predicts, for each of the next
``horizon`` steps, the change from the last value in units of the scale, as the
p10, p50 and p90 quantiles (trained with the pinball loss). The p50 head starts at
"no change" (the naive forecast) and learns corrections from there.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

QUANTILES = (0.1, 0.5, 0.9)
CALENDAR_FEATURES = 4
INPUT_CLIP = 50.0


@dataclass(frozen=True)
class ForecasterConfig:
    """Every hyperparameter of the forecaster; ``params.yaml`` holds the values."""

    context: int = 288
    horizon: int = 12
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.1
    epochs: int = 12
    batch_size: int = 512
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    validation_fraction: float = 0.1
    ensemble: int = 1
    seed: int = 7


class QuantileMLP(nn.Module):
    """MLP with a linear skip path; outputs ordered p10 <= p50 <= p90 per step."""

    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__()
        width = config.context + CALENDAR_FEATURES
        blocks: list[nn.Module] = []
        for _ in range(config.layers):
            blocks += [nn.Linear(width, config.hidden), nn.GELU(), nn.Dropout(config.dropout)]
            width = config.hidden
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width, 3 * config.horizon)
        self.skip = nn.Linear(config.context + CALENDAR_FEATURES, config.horizon)
        for layer in (self.head, self.skip):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.horizon = config.horizon

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.head(self.body(features)).view(-1, 3, self.horizon)
        median = out[:, 1] + self.skip(features)
        low = median - nn.functional.softplus(out[:, 0]) - 1e-3
        high = median + nn.functional.softplus(out[:, 2]) + 1e-3
        return torch.stack([low, median, high], dim=1)


def calendar_features(origin_times: np.ndarray) -> np.ndarray:
    """Time of day and day of week of each origin, as points on two circles."""
    seconds = origin_times.astype("datetime64[s]").astype(np.int64)
    day = (seconds % 86_400) / 86_400.0
    week = ((seconds // 86_400 + 3) % 7) / 7.0  # 1970-01-01 was a Thursday: 0 = Monday
    angles = 2 * math.pi * np.stack([day, week], axis=1)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def normalise(contexts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale-free inputs: (contexts - last) / scale, with the location and scale used."""
    loc = contexts[:, -1:]
    steps = np.abs(np.diff(contexts, axis=1)).mean(axis=1, keepdims=True)
    level = np.abs(contexts).mean(axis=1, keepdims=True)
    scale = np.maximum(steps, 1e-3 * level + 1e-8)
    normed = np.clip((contexts - loc) / scale, -INPUT_CLIP, INPUT_CLIP)
    return normed.astype(np.float32), loc, scale


def training_windows(
    values: np.ndarray, timestamps: np.ndarray, end: int, config: ForecasterConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (context, origin time, future) window that fits inside ``values[:end]``."""
    span = config.context + config.horizon
    if end < span:
        return (
            np.empty((0, config.context)),
            np.empty((0,), dtype="datetime64[ns]"),
            np.empty((0, config.horizon)),
        )
    windows = np.lib.stride_tricks.sliding_window_view(values[:end], span)
    origins = timestamps[config.context - 1 : end - config.horizon]
    return windows[:, : config.context], origins, windows[:, config.context :]


def pinball_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean quantile loss over p10, p50 and p90."""
    losses = []
    for index, quantile in enumerate(QUANTILES):
        error = target - predicted[:, index]
        losses.append(torch.maximum(quantile * error, (quantile - 1) * error).mean())
    return torch.stack(losses).sum()


class Forecaster:
    """An ensemble of quantile networks with the normalisation around them."""

    def __init__(self, config: ForecasterConfig, nets: Sequence[QuantileMLP] | None = None) -> None:
        self.config = config
        self.nets = list(nets) if nets is not None else []

    def predict(self, contexts: np.ndarray, origin_times: np.ndarray) -> np.ndarray:
        """Quantile forecasts in the series' units: shape (batch, 3, horizon)."""
        if not self.nets:
            raise RuntimeError("the forecaster has not been trained or loaded")
        normed, loc, scale = normalise(np.asarray(contexts, dtype=np.float64))
        features = torch.from_numpy(np.concatenate([normed, calendar_features(origin_times)], axis=1))
        with torch.inference_mode():
            outputs = [net.eval()(features).numpy() for net in self.nets]
        median_change = np.median(np.stack(outputs), axis=0)
        return loc[:, :, None] + scale[:, :, None] * median_change

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(asdict(self.config), indent=2))
        for index, net in enumerate(self.nets):
            torch.save(net.state_dict(), directory / f"net{index}.pt")

    @classmethod
    def load(cls, directory: Path) -> Forecaster:
        config = ForecasterConfig(**json.loads((directory / "config.json").read_text()))
        nets = []
        for index in range(config.ensemble):
            net = QuantileMLP(config)
            net.load_state_dict(torch.load(directory / f"net{index}.pt", weights_only=True))
            nets.append(net.eval())
        return cls(config, nets)
