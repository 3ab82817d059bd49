"""A day of the demo TMS's traffic: a quiet night, a morning rush, a lunch dip, an afternoon peak.

:func:`day_trace` gives 288 rates five minutes apart (one day, the forecaster's training step),
between about 0.1 at night and 1.0 at the afternoon peak, with a little noise that is the same
every time. Scale it with ``peak_rps`` and compress it with the load generator.
"""

from __future__ import annotations

import math
import random

from tmsops.loadgen import Trace

STEP_S = 300.0
STEPS_PER_DAY = 288
SEED = 20261207
NIGHT = 0.1
# (hour of the peak, its height above the night level, its width in hours)
PEAKS = ((10.0, 0.75, 1.6), (15.5, 0.9, 2.0), (20.0, 0.3, 1.5))


def daily_rate(hour: float) -> float:
    """The noiseless shape at ``hour`` (0..24), between NIGHT and about 1."""
    bumps = sum(height * math.exp(-(((hour - at) / width) ** 2) / 2) for at, height, width in PEAKS)
    return NIGHT + bumps


def day_trace(noise: float = 0.03) -> Trace:
    """One day at five-minute steps, the shape of :func:`daily_rate` normalised to a peak of 1."""
    rng = random.Random(SEED)
    shape = [daily_rate(24 * step / STEPS_PER_DAY) for step in range(STEPS_PER_DAY)]
    peak = max(shape)
    values = tuple(max(0.01, value / peak * (1 + rng.gauss(0, noise))) for value in shape)
    return Trace("demo day", tuple(step * STEP_S for step in range(STEPS_PER_DAY)), values)
