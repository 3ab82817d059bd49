"""Training of the detector: Laplace likelihood of every next point, then the threshold."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from tqdm import tqdm

from training.detector import CausalPredictor, Detector, DetectorConfig, standardise_online

CHUNK = 1024


def fit_detector(
    values: Sequence[np.ndarray], config: DetectorConfig, *, progress: bool = True
) -> tuple[Detector, dict[str, float]]:
    """Train the causal predictor on shuffled mini-batches of standardised chunks of every series."""
    torch.manual_seed(config.seed)
    chunks = torch.from_numpy(_chunks([standardise_online(v, config.standardise_span) for v in values]))
    net = CausalPredictor(config)
    optimiser = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    loss = 0.0
    epochs = tqdm(range(config.epochs), desc="detector", disable=not progress)
    with _fast_small_steps():
        for _ in epochs:
            batches = torch.randperm(len(chunks)).split(config.batch_size)
            loss = float(np.mean([_step(net.train(), optimiser, chunks[batch], config) for batch in batches]))
            epochs.set_postfix(nll=f"{loss:.4f}")
    return Detector(config, net.eval()), {"detector_nll": loss, "chunks": float(len(chunks))}


@contextmanager
def _fast_small_steps() -> Iterator[None]:
    """One thread (small steps only lose to thread start-up and contention) and denormals
    flushed to zero (tiny Adam moments otherwise slow every step tenfold)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def _step(net: CausalPredictor, optimiser: torch.optim.Optimizer, batch: torch.Tensor, config: DetectorConfig) -> float:
    """One Adam step on the Laplace negative log-likelihood of every point after the warm-up."""
    optimiser.zero_grad()
    mean, log_spread = net(batch)
    error = (batch - mean).abs() / log_spread.exp() + log_spread
    loss = error[:, 2**config.levels :].mean()
    loss.backward()
    optimiser.step()
    return float(loss.detach())


def _chunks(series: Sequence[np.ndarray]) -> np.ndarray:
    """Cut every series into whole chunks of CHUNK points (a short series is one chunk, padded)."""
    parts = []
    for standard in series:
        if len(standard) < CHUNK:
            parts.append(np.pad(standard, (CHUNK - len(standard), 0), mode="edge"))
            continue
        starts = range(0, len(standard) - CHUNK + 1, CHUNK // 2)
        parts.extend(standard[start : start + CHUNK] for start in starts)
    if not parts:
        raise ValueError("no series to train the detector on")
    return np.stack(parts).astype(np.float32)
