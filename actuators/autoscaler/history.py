"""Demand history per service, at the forecaster's step: samples averaged into buckets of ``step_s``."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class DemandHistory:
    """The mean demand of each completed step (oldest first) and the step being filled."""

    step_s: float
    keep: int = 2016
    points: deque[float] = field(default_factory=deque)
    last_at: float | None = None
    first_step_start: float | None = None  # where the steps recorded here begin (backfilled ones end there)
    _bucket_start: float | None = None
    _bucket: list[float] = field(default_factory=list)

    def add(self, at: float, demand: float) -> None:
        """Record a sample; every step boundary passed closes a bucket (an empty one repeats the last value).

        The first step is centred on the first sample: a step's mean counts as the demand at its
        middle, so with one sample a step (interval = step) each sample sits where its value is dated.
        """
        if self._bucket_start is None:
            self._bucket_start = self.first_step_start = at - self.step_s / 2
        while at >= self._bucket_start + self.step_s:
            self._close()
            self._bucket_start += self.step_s
        self._bucket.append(demand)
        self.last_at = at

    def backfill(self, values: list[float]) -> None:
        """Older points (e.g. from Prometheus) placed before the ones recorded here."""
        for value in reversed(values):
            self.points.appendleft(value)
        while len(self.points) > self.keep:
            self.points.popleft()

    def last(self, count: int) -> list[float] | None:
        """The last ``count`` completed points, or None while fewer exist."""
        if len(self.points) < count:
            return None
        return list(self.points)[-count:]

    @property
    def step_end(self) -> float | None:
        """When the last completed step ended (the forecast's origin)."""
        return self._bucket_start

    def _close(self) -> None:
        if self._bucket:
            value = sum(self._bucket) / len(self._bucket)
        elif self.points:
            value = self.points[-1]
        else:
            return
        self.points.append(value)
        self._bucket.clear()
        if len(self.points) > self.keep:
            self.points.popleft()
