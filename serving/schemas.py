"""Request and response bodies of the model server.

Limits that depend on the loaded model (the forecaster's context and horizon) are
checked by validators that read :data:`LIMITS`, which the server updates whenever
it loads a model; a bad series is refused with 422 before it can join a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # numbers only: no "1.5", no true


def _text_not_number(value: Any) -> Any:
    """A time is ISO 8601 text: pydantic would also read a number (or "123"), as seconds since 1970."""
    if isinstance(value, int | float) or (isinstance(value, str) and _is_number(value)):
        raise ValueError("expected an ISO 8601 date-time such as 2026-03-02T08:00:00Z, not a number")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _whole_number(value: Any) -> Any:
    """``6.0`` as ``6``: JSON has one type of number, and a schema's integer may be spelt either way."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Timestamp = Annotated[datetime, BeforeValidator(_text_not_number)]
PositiveSeconds = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
Steps = Annotated[int, Field(strict=True, ge=1), BeforeValidator(_whole_number)]


@dataclass
class Limits:
    context: int = 1
    horizon: int = 1
    max_points: int = 50_000
    max_series: int = 1024


LIMITS = Limits()


def _at_most_max_series(series: Any) -> Any:
    """Refuses an over-long ``series`` list before its items are validated."""
    if isinstance(series, list) and len(series) > LIMITS.max_series:
        raise ValueError(f"at most {LIMITS.max_series} series per request, got {len(series)}")
    return series


class _Series(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field("", max_length=512, description="caller's name for the series, echoed back")
    values: list[FiniteFloat] = Field(min_length=1, description="finite numbers, oldest first")
    timestamps: list[Timestamp] | None = Field(None, description="one per value; or give start and step_s")
    start: Timestamp | None = Field(None, description="time of the first value")
    step_s: PositiveSeconds | None = Field(None, description="seconds between values")

    @model_validator(mode="after")
    def _check_time(self) -> _Series:
        if len(self.values) > LIMITS.max_points:
            raise ValueError(f"values: at most {LIMITS.max_points} points per series, got {len(self.values)}")
        if self.timestamps is not None:
            if len(self.timestamps) != len(self.values):
                raise ValueError(f"timestamps: {len(self.timestamps)} given for {len(self.values)} values")
            if any(b <= a for a, b in zip(self.timestamps, self.timestamps[1:], strict=False)):
                raise ValueError("timestamps: must strictly increase")
        elif (self.start is None) != (self.step_s is None):
            raise ValueError("start and step_s: give both, or timestamps, or neither")
        return self

    def step(self) -> timedelta | None:
        if self.timestamps is not None and len(self.timestamps) > 1:
            steps = sorted(b - a for a, b in zip(self.timestamps, self.timestamps[1:], strict=False))
            return steps[len(steps) // 2]  # the median step, as the model itself uses
        return timedelta(seconds=self.step_s) if self.step_s else None

    def last_time(self) -> datetime | None:
        if self.timestamps is not None:
            return self.timestamps[-1]
        if self.start is not None and self.step_s:
            return self.start + timedelta(seconds=self.step_s * (len(self.values) - 1))
        return None


class ForecastSeries(_Series):
    horizon: Steps | None = Field(None, description="steps to forecast; default and maximum: the model's horizon")

    @model_validator(mode="after")
    def _check_model_limits(self) -> ForecastSeries:
        if len(self.values) < LIMITS.context:
            raise ValueError(f"values: the model needs at least {LIMITS.context} points, got {len(self.values)}")
        if self.horizon is not None and self.horizon > LIMITS.horizon:
            raise ValueError(f"horizon: at most {LIMITS.horizon} steps, got {self.horizon}")
        return self


class DetectSeries(_Series):
    pass


# The request bodies' ``series``: at least one, at most ``max_series``.
ForecastBatch = Annotated[list[ForecastSeries], BeforeValidator(_at_most_max_series), Field(min_length=1)]
DetectBatch = Annotated[list[DetectSeries], BeforeValidator(_at_most_max_series), Field(min_length=1)]


class ForecastResult(BaseModel):
    id: str
    timestamps: list[datetime] | None
    p10: list[float]
    p50: list[float]
    p90: list[float]
    model: str
    version: str


class DetectResult(BaseModel):
    id: str
    scores: list[float]
    anomalies: list[int] = Field(description="indices whose score is at or over the threshold")
    threshold: float
    model: str
    version: str
