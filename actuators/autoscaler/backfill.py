"""Demand history from Prometheus for a service the loop has just started to watch.

The forecaster needs a context of steps (288 five-minute steps: a day) before it forecasts; read
live, that is a day of reactive-only scaling after every start. So once the loop has a service's
first demand sample it asks Prometheus for the steps before it and places them before its own.

A step of the history is the mean demand over the step: a rate over one step's window,
evaluated at the step's end.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from tmsops.metrics_source import Point, PrometheusSource


async def demand_before(
    source: PrometheusSource, service: str, first_step_start: datetime, step_s: float, steps: int
) -> list[float]:
    """Up to ``steps`` mean demands of the steps before ``first_step_start``, oldest first."""
    step = timedelta(seconds=step_s)
    last_at = first_step_start  # the end of the last step read
    first_at = last_at - step * (steps - 1)
    end = min(last_at, datetime.now(UTC))
    if end <= first_at:
        return []
    points = await source.service_history(service, "requestsPerSecond", first_at, end, step, window=step)
    return contiguous_steps(points, first_at, step_s, steps)


def contiguous_steps(points: list[Point], first_at: datetime, step_s: float, steps: int) -> list[float]:
    """The values of ``steps`` steps from ``first_at``: from the first step with a finite value on,
    a step without one repeats the value before it (as the live history carries a gap)."""
    by_step: dict[int, float] = {}
    for at, value in points:
        index = round((at - first_at).total_seconds() / step_s)
        if 0 <= index < steps and math.isfinite(value):
            by_step[index] = value
    if not by_step:
        return []
    first = min(by_step)
    values = [by_step[first]]
    for index in range(first + 1, steps):
        values.append(by_step.get(index, values[-1]))
    return values
