"""``GET /anomalies``: the anomaly model run on each service's recent demand, as events."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel

from tmsops.model_client import SeriesIn

if TYPE_CHECKING:
    from actuators.autoscaler.loop import Autoscaler

MIN_POINTS = 32
MAX_POINTS = 2016


class AnomalyEvent(BaseModel):
    service: str
    metric: str
    at: datetime
    value: float
    score: float
    threshold: float
    model_version: str


async def find_anomalies(scaler: Autoscaler, service: str | None = None) -> list[AnomalyEvent]:
    """Events for the points of the demand history the detector flags; services with too little history are skipped."""
    chosen = {
        name: list(state.history.points)[-MAX_POINTS:]
        for name, state in scaler.services.items()
        if (service is None or name == service) and len(state.history.points) >= MIN_POINTS
    }
    if not chosen:
        return []
    detections = await scaler.models.detect([SeriesIn(id=name, values=values) for name, values in chosen.items()])
    events = []
    for detection in detections:
        state = scaler.services[detection.id]
        values = chosen[detection.id]
        last_at = _wall_time(state.history.step_end)
        step = timedelta(seconds=state.history.step_s)
        for index in detection.anomalies:
            events.append(
                AnomalyEvent(
                    service=detection.id,
                    metric="requests_per_second",
                    at=last_at - step * (len(values) - index),
                    value=values[index],
                    score=detection.scores[index],
                    threshold=detection.threshold,
                    model_version=detection.version,
                )
            )
    return sorted(events, key=lambda event: event.at, reverse=True)


def _wall_time(monotonic_at: float | None) -> datetime:
    now = datetime.now(UTC)
    return now if monotonic_at is None else now - timedelta(seconds=max(0.0, time.monotonic() - monotonic_at))
