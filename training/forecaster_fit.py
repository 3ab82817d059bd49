"""Training of the forecaster: windows from every series, pinball loss, early stopping."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from training.forecaster import (
    Forecaster,
    ForecasterConfig,
    QuantileMLP,
    calendar_features,
    normalise,
    pinball_loss,
    training_windows,
)


def window_tensors(
    values: Sequence[np.ndarray],
    timestamps: Sequence[np.ndarray],
    ends: Sequence[int],
    config: ForecasterConfig,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Features and normalised targets, split in time into training and validation parts."""
    train_parts: list[tuple[np.ndarray, np.ndarray]] = []
    valid_parts: list[tuple[np.ndarray, np.ndarray]] = []
    for series, stamps, end in zip(values, timestamps, ends, strict=True):
        contexts, origins, futures = training_windows(series, stamps, end, config)
        if len(contexts) == 0:
            continue
        normed, loc, scale = normalise(contexts)
        features = np.concatenate([normed, calendar_features(origins)], axis=1)
        targets = np.clip((futures - loc) / scale, -100.0, 100.0).astype(np.float32)
        cut = len(features) - max(1, int(len(features) * config.validation_fraction))
        train_parts.append((features[:cut], targets[:cut]))
        valid_parts.append((features[cut:], targets[cut:]))
    if not train_parts:
        raise ValueError(
            f"no series is long enough to train on: each needs at least "
            f"context + horizon = {config.context + config.horizon} points before its test region"
        )
    return _stack(train_parts), _stack(valid_parts)


def _stack(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    features = np.concatenate([part[0] for part in parts])
    targets = np.concatenate([part[1] for part in parts])
    return torch.from_numpy(features), torch.from_numpy(targets)


def fit_forecaster(
    values: Sequence[np.ndarray],
    timestamps: Sequence[np.ndarray],
    ends: Sequence[int],
    config: ForecasterConfig,
    *,
    progress: bool = True,
) -> tuple[Forecaster, dict[str, float]]:
    """Train ``config.ensemble`` networks on every series' values before ``ends``."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train, valid = window_tensors(values, timestamps, ends, config)
    nets, losses = [], []
    for member in range(config.ensemble):
        net, loss = _fit_one(train, valid, config, config.seed + member, progress)
        nets.append(net)
        losses.append(loss)
    metrics = {
        "train_windows": float(len(train[0])),
        "validation_windows": float(len(valid[0])),
        "validation_pinball": float(np.mean(losses)),
    }
    return Forecaster(config, nets), metrics


def _fit_one(
    train: tuple[torch.Tensor, torch.Tensor],
    valid: tuple[torch.Tensor, torch.Tensor],
    config: ForecasterConfig,
    seed: int,
    progress: bool,
) -> tuple[QuantileMLP, float]:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = QuantileMLP(config)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.epochs)
    best_loss, best_state = _validation_loss(net, valid), copy.deepcopy(net.state_dict())
    epochs = tqdm(range(config.epochs), desc=f"forecaster seed {seed}", disable=not progress)
    for _ in epochs:
        net.train()
        order = torch.randperm(len(train[0]), generator=generator)
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            optimiser.zero_grad()
            loss = pinball_loss(net(train[0][batch]), train[1][batch])
            loss.backward()
            optimiser.step()
        schedule.step()
        current = _validation_loss(net, valid)
        epochs.set_postfix(validation=f"{current:.4f}")
        if current < best_loss:
            best_loss, best_state = current, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    return net.eval(), best_loss


def _validation_loss(net: QuantileMLP, valid: tuple[torch.Tensor, torch.Tensor]) -> float:
    net.eval()
    with torch.inference_mode():
        return float(pinball_loss(net(valid[0]), valid[1]))
