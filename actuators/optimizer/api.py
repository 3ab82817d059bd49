"""The optimizer's HTTP API (port 8012): analyses, recommendations, measured changes and their history."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from actuators.optimizer.dashboard import dashboard_data, render_dashboard
from actuators.optimizer.database.advisor import DatabaseAdvice
from actuators.optimizer.database.plans import Candidate
from actuators.optimizer.journal import Kind, Optimization
from actuators.optimizer.optimizer import Optimizer
from actuators.optimizer.overview import Bottleneck, Overview, Recommendations
from tmsops.auth import OperateToken
from tmsops.http_docs import ResponsesSpec, error_responses
from tmsops.settings import DURATION_PATTERN

_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_$]*$"
# Ids are the state store's 64-bit integers.
OptimizationId = Annotated[int, Path(ge=1, le=2**63 - 1)]
# A change: the target, the database or the cache refuses (409), fails (502) or is down (503);
# an unknown service, table or optimization is a 404.
CHANGE_ERRORS = error_responses(404, 409, 502, 503)
DASHBOARD_JSON: ResponsesSpec = {200: {"content": {"application/json": {"schema": {"type": "object"}}}}}


class Body(BaseModel):
    """A request body: strict, so a number is a JSON number and a flag a JSON boolean."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", strict=True)


class IndexSpec(Body):
    table: str = Field(min_length=1, max_length=63, pattern=_IDENTIFIER)
    columns: list[Annotated[str, Field(min_length=1, max_length=63, pattern=_IDENTIFIER)]] = Field(
        min_length=1, max_length=8
    )
    descending: list[bool] | None = None

    @model_validator(mode="after")
    def _one_direction_per_column(self) -> IndexSpec:
        if self.descending is not None and len(self.descending) != len(self.columns):
            raise ValueError(f"descending has {len(self.descending)} entries for {len(self.columns)} columns")
        return self

    def candidate(self) -> Candidate:
        return Candidate(self.table, tuple(self.columns), tuple(self.descending or ()))


class DatabaseRequest(Body):
    """Apply ``indexes`` (default: the recommended ones); each is measured and kept only if it helps."""

    dry_run: bool = False
    indexes: list[IndexSpec] | None = Field(None, max_length=20)


class CacheRequest(Body):
    dry_run: bool = False
    target_hit_rate: float | None = Field(None, gt=0, lt=1)


class AutoOptimizeRequest(Body):
    service: str = Field(min_length=1, max_length=200)
    scope: Literal["all", "database", "cache", "resources"] = "all"
    dry_run: bool = False


class DatabaseOutcome(BaseModel):
    advice: DatabaseAdvice | None
    applied: list[Optimization]


class AutoOptimizeOutcome(BaseModel):
    service: str
    scope: str
    dry_run: bool
    applied: list[Optimization]
    skipped: list[str]


def _optimizer(request: Request) -> Optimizer:
    optimizer: Optimizer = request.app.state.optimizer
    return optimizer


def router() -> APIRouter:
    routes = APIRouter(tags=["optimizer"])

    @routes.get("/analysis/overview", response_model=Overview)
    async def overview(
        request: Request,
        time_range: Annotated[
            str, Query(alias="timeRange", pattern=DURATION_PATTERN, description="1m to 31d, e.g. 15m, 1h, 24h")
        ] = "1h",
    ) -> Overview:
        """Database, cache, resources and network at a glance; a part whose system is unreachable says why."""
        return await _optimizer(request).overview(time_range)

    @routes.get("/analysis/bottlenecks", response_model=list[Bottleneck])
    async def bottlenecks(request: Request) -> list[Bottleneck]:
        """What slows the platform down most, ranked: slow queries, cache misses, saturated services, slow routes."""
        return await _optimizer(request).bottlenecks()

    @routes.get("/recommendations", response_model=Recommendations)
    async def recommendations(request: Request) -> Recommendations:
        """Every recommendation, with its estimated effect and the command that would apply it."""
        return await _optimizer(request).recommendations()

    @routes.post("/optimization/database", response_model=DatabaseOutcome, responses=CHANGE_ERRORS)
    async def optimize_database(request: Request, token: OperateToken, body: DatabaseRequest) -> DatabaseOutcome:
        """Create indexes (the recommended ones by default), each kept only when the measured read time falls."""
        indexes = [spec.candidate() for spec in body.indexes] if body.indexes is not None else None
        result = await _optimizer(request).optimize_database(dry_run=body.dry_run, indexes=indexes)
        return DatabaseOutcome(advice=result.advice, applied=result.applied)

    @routes.post("/optimization/cache", response_model=list[Optimization], responses=CHANGE_ERRORS)
    async def optimize_cache(request: Request, token: OperateToken, body: CacheRequest) -> list[Optimization]:
        """Size and evict the cache for the target hit rate; kept only when the measured hit rate holds."""
        return await _optimizer(request).optimize_cache(dry_run=body.dry_run, target_hit_rate=body.target_hit_rate)

    @routes.post("/auto-optimize", response_model=AutoOptimizeOutcome, responses=CHANGE_ERRORS)
    async def auto_optimize(request: Request, token: OperateToken, body: AutoOptimizeRequest) -> AutoOptimizeOutcome:
        """Everything the policy allows for ``service``: indexes (autoIndexing), cache, resources (safeMode)."""
        applied, skipped = await _optimizer(request).auto_optimize(body.service, body.scope, dry_run=body.dry_run)
        return AutoOptimizeOutcome(
            service=body.service, scope=body.scope, dry_run=body.dry_run, applied=applied, skipped=skipped
        )

    @routes.get("/optimizations", response_model=list[Optimization])
    async def history(
        request: Request,
        kind: Kind | None = None,
        service: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[Optimization]:
        """Applied (and refused, rolled back, planned) changes, newest first, with measured before and after."""
        return _optimizer(request).journal.recent(kind=kind, service=service, limit=limit)

    @routes.get("/optimizations/{optimization_id}", response_model=Optimization, responses=error_responses(404))
    async def one(request: Request, optimization_id: OptimizationId) -> Optimization:
        return _optimizer(request).journal.get(optimization_id)

    @routes.post("/optimizations/{optimization_id}/rollback", response_model=Optimization, responses=CHANGE_ERRORS)
    async def rollback(request: Request, token: OperateToken, optimization_id: OptimizationId) -> Optimization:
        """Take back a kept change (drop the index, restore the cache setting or the resources)."""
        return await _optimizer(request).rollback(optimization_id)

    @routes.get("/dashboard", response_model=None, response_class=HTMLResponse, responses=DASHBOARD_JSON)
    async def dashboard(request: Request) -> Response:
        """Measured before/after of every change, recommendations and bottlenecks: HTML, or JSON on request."""
        data = await dashboard_data(_optimizer(request))
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse(data)
        return HTMLResponse(render_dashboard(data, request.app.state.settings.ports))

    return routes
