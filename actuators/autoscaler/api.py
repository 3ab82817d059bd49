"""The autoscaler's HTTP API (port 8011): predictions, recommendations, scaling, cost, anomalies, dashboard."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, model_validator

from actuators.autoscaler.anomalies import AnomalyEvent, find_anomalies
from actuators.autoscaler.cost import CostAnalysis, cost_analysis
from actuators.autoscaler.dashboard import dashboard_data, render_dashboard
from actuators.autoscaler.loop import Autoscaler
from actuators.autoscaler.records import DecisionRecord
from tmsops.auth import OperateToken
from tmsops.errors import PermanentError
from tmsops.http_docs import ResponsesSpec, error_responses
from tmsops.settings import DURATION_PATTERN, parse_duration, whole_number
from tmsops.targets.model import ServiceStatus

# A call on the target: an unknown service (404), a target that refused or failed (502), one that is down (503).
TARGET_ERRORS = error_responses(404, 502, 503)
# ``set`` needs ``replicas``, in the schema as in :meth:`ScaleRequest._set_needs_replicas`.
SET_NEEDS_REPLICAS: dict[str, JsonValue] = {
    "if": {"properties": {"action": {"const": "set"}}},
    "then": {"required": ["replicas"], "properties": {"replicas": {"type": "integer"}}},
}
# Further back than this, a window's start is not even a date (and no decision is that old).
MAX_COST_WINDOW = timedelta(days=366)
DASHBOARD_JSON: ResponsesSpec = {200: {"content": {"application/json": {"schema": {"type": "object"}}}}}


class BadParameter(PermanentError):
    http_status = 422


class ScaleRequest(BaseModel):
    """``set`` to ``replicas``; ``scale_up`` / ``scale_down`` by ``replicas`` (default 1)."""

    model_config = ConfigDict(json_schema_extra=SET_NEEDS_REPLICAS, strict=True)

    service: str = Field(min_length=1, max_length=200)
    action: Literal["scale_up", "scale_down", "set"]
    replicas: Annotated[int, Field(ge=0, le=10_000), BeforeValidator(whole_number)] | None = None
    reason: str = Field("manual request", max_length=500)

    @model_validator(mode="after")
    def _set_needs_replicas(self) -> ScaleRequest:
        if self.action == "set" and self.replicas is None:
            raise ValueError("replicas is required when action is set")
        return self


class ScaleResult(BaseModel):
    service: str
    previous: int
    replicas: int
    status: ServiceStatus


class Recommendation(BaseModel):
    service: str
    current: int
    recommended: int
    reactive: int
    predictive: int | None
    reason: str
    fallback: str | None
    mode: str


class Prediction(BaseModel):
    service: str
    step_s: float
    timestamps: list[datetime]
    p10: list[float]
    p50: list[float]
    p90: list[float]
    model_version: str | None


def _scaler(request: Request) -> Autoscaler:
    scaler: Autoscaler = request.app.state.autoscaler
    return scaler


def router() -> APIRouter:
    routes = APIRouter(tags=["autoscaler"])

    @routes.get("/recommendations", response_model=list[Recommendation])
    async def recommendations(request: Request) -> list[Recommendation]:
        """Per service: the current count, the recommended one and why (from the last decision)."""
        scaler = _scaler(request)
        return [
            Recommendation(
                service=name,
                current=state.decision.current,
                recommended=state.decision.desired,
                reactive=state.decision.reactive,
                predictive=state.decision.predictive,
                reason=state.decision.reason,
                fallback=state.decision.fallback,
                mode=scaler.settings.scaling.mode,
            )
            for name, state in sorted(scaler.services.items())
            if state.decision is not None
        ]

    @routes.get("/predictions", response_model=Prediction, responses=TARGET_ERRORS)
    async def predictions(
        request: Request,
        service: Annotated[str, Query(min_length=1)],
        time_horizon: Annotated[
            str | None,
            Query(alias="timeHorizon", pattern=DURATION_PATTERN, description="e.g. 30m, 1h; default the model's"),
        ] = None,
    ) -> Prediction:
        """The latest demand forecast of ``service`` (requests/s), up to ``timeHorizon`` ahead."""
        scaler = _scaler(request)
        await scaler.target.service(service)
        state = scaler.services.get(service)
        forecast = state.forecast if state else None
        step_s = scaler.settings.scaling.forecast_step.total_seconds()
        steps = _horizon_steps(time_horizon, step_s, scaler.model.horizon)
        if state is None or forecast is None:
            raise BadParameter(
                f"no forecast for {service} yet: {scaler.forecast_problem(scaler.state(service))}",
                details={"service": service},
            )
        origin = datetime.now(UTC) - timedelta(seconds=max(0.0, time.monotonic() - forecast.at))
        stamps = [origin + timedelta(seconds=step_s * (index + 1)) for index in range(steps)]
        return Prediction(
            service=service,
            step_s=step_s,
            timestamps=stamps,
            p10=list(forecast.p10[:steps]),
            p50=list(forecast.p50[:steps]),
            p90=list(forecast.p90[:steps]),
            model_version=scaler.model.version,
        )

    @routes.post("/scale", response_model=ScaleResult, responses=TARGET_ERRORS)
    async def scale(request: Request, token: OperateToken, body: ScaleRequest) -> ScaleResult:
        """Scale a service now; waits for a scale of the same service in progress, then applies this one."""
        outcome = await _scaler(request).scale(body.service, body.action, body.replicas, body.reason)
        return ScaleResult(service=body.service, **outcome)

    @routes.get("/decisions", response_model=list[DecisionRecord])
    async def decisions(
        request: Request,
        service: str | None = None,
        limit: Annotated[int, Query(ge=1, le=5000)] = 200,
    ) -> list[DecisionRecord]:
        """Recorded decisions, newest first, with their inputs and reasons."""
        return _scaler(request).store.recent(service=service, limit=limit)

    @routes.get("/cost-analysis", response_model=CostAnalysis)
    async def cost(
        request: Request,
        window: Annotated[str, Query(pattern=DURATION_PATTERN, description="e.g. 1h, 24h, 7d; at most 366d")] = "24h",
    ) -> CostAnalysis:
        """Replica-hours and cost: actual, a static peak count, and what the HPA rule would have used."""
        scaler = _scaler(request)
        span = _duration("window", window, longest=MAX_COST_WINDOW)
        records = scaler.store.recent(since=datetime.now(UTC) - span, limit=100_000)
        return cost_analysis(records, span, scaler.settings.scaling.price_per_replica_hour)

    @routes.get("/anomalies", response_model=list[AnomalyEvent], responses=TARGET_ERRORS)
    async def anomalies(request: Request, service: str | None = None) -> list[AnomalyEvent]:
        """Anomalies the detector finds in each service's recent demand, as events."""
        scaler = _scaler(request)
        if service is not None:
            await scaler.target.service(service)
        return await find_anomalies(scaler, service)

    @routes.get("/dashboard", response_model=None, response_class=HTMLResponse, responses=DASHBOARD_JSON)
    async def dashboard(request: Request) -> Response:
        """Forecast band against actual demand, replicas and decisions: HTML, or JSON for Accept: application/json."""
        data = dashboard_data(_scaler(request))
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse(data)
        return HTMLResponse(render_dashboard(data, request.app.state.settings.ports))

    return routes


def _horizon_steps(text: str | None, step_s: float, horizon: int) -> int:
    if text is None:
        return horizon
    steps = math.ceil(_duration("timeHorizon", text).total_seconds() / step_s - 1e-9)
    if not 1 <= steps <= horizon:
        limit = timedelta(seconds=step_s * horizon)
        raise BadParameter(
            f"timeHorizon: {text} is {steps} steps of {step_s:g} s; the model forecasts 1 to {horizon} ({limit})",
            details={"timeHorizon": text, "max_steps": horizon},
        )
    return steps


def _duration(name: str, text: str, *, longest: timedelta | None = None) -> timedelta:
    try:
        parsed = parse_duration(text.strip())
    except ValueError:  # too long for a timedelta
        parsed = None
    if not isinstance(parsed, timedelta) or parsed <= timedelta(0):
        raise BadParameter(f"{name}: {text!r} is not a positive duration such as 30m, 1h or 7d", details={name: text})
    if longest is not None and parsed > longest:
        raise BadParameter(f"{name}: {text!r} is longer than {longest.days}d", details={name: text})
    return parsed
