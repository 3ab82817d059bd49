"""The fleet's control API: the target interface over HTTP, for the other tmsops services.

Reads are open; changes need a token with scope ``operate`` and are audited. Errors keep
the target's meaning: 404 for an unknown service or fault, 422 for a request the fleet
refuses, 502 for a replica that failed to start, 503 with ``Retry-After`` when a retry helps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, FastAPI, Query, Request
from pydantic import ConfigDict, Field, StrictBool

from tmsops import __version__
from tmsops.app import create_app
from tmsops.auth import OperateToken
from tmsops.fleet.supervisor import Fleet
from tmsops.http_docs import error_responses
from tmsops.settings import FleetSettings, WholeNumber
from tmsops.targets.model import Fault, FaultRequest, Model, Resources, ServiceStatus, ServiceUsage

# A change: an unknown service or replica (404), a replica that failed to start (502), a retry helps (503).
CHANGE_ERRORS = error_responses(404, 502, 503)
NOT_FOUND = error_responses(404)


class ReplicasChange(Model):
    model_config = ConfigDict(strict=True)

    replicas: WholeNumber = Field(ge=0, le=1000)
    dry_run: bool = False


class ResourcesChange(Resources):
    dry_run: StrictBool = False


def build_app(settings: FleetSettings, fleet: Fleet | None = None) -> FastAPI:
    """The control API of ``fleet`` (by default a fleet made from the settings, started with the app)."""
    fleet = fleet or Fleet(settings.fleet, state_dir=settings.state_dir, host=settings.host)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await fleet.start()
        try:
            yield
        finally:
            await fleet.stop()

    app = create_app("fleet", settings, version=__version__, lifespan=lifespan)
    app.state.fleet = fleet
    app.state.metrics.include(fleet.metrics.registry)
    app.include_router(_router())
    return app


def _fleet(request: Request) -> Fleet:
    fleet: Fleet = request.app.state.fleet
    return fleet


def _router() -> APIRouter:
    router = APIRouter(tags=["fleet"])

    @router.get("/services", response_model=list[ServiceStatus])
    async def list_services(request: Request) -> list[ServiceStatus]:
        """Every service with its desired and ready replicas, resources and replicas."""
        return await _fleet(request).list_services()

    @router.get("/services/{name}", response_model=ServiceStatus, responses=NOT_FOUND)
    async def service(request: Request, name: str) -> ServiceStatus:
        return await _fleet(request).service(name)

    @router.put("/services/{name}/replicas", response_model=ServiceStatus, responses=CHANGE_ERRORS)
    async def set_replicas(request: Request, token: OperateToken, name: str, change: ReplicasChange) -> ServiceStatus:
        """Scale to ``replicas``: answers once the new replicas are ready, or the old ones are drained and stopped."""
        return await _fleet(request).set_replicas(name, change.replicas, dry_run=change.dry_run)

    @router.patch("/services/{name}/resources", response_model=ServiceStatus, responses=CHANGE_ERRORS)
    async def set_resources(request: Request, token: OperateToken, name: str, change: ResourcesChange) -> ServiceStatus:
        """Set requests and limits per replica (the fields given); the memory limit is enforced."""
        resources = Resources.model_validate(change.model_dump(exclude={"dry_run"}))
        return await _fleet(request).set_resources(name, resources, dry_run=change.dry_run)

    @router.get("/services/{name}/usage", response_model=ServiceUsage, responses=NOT_FOUND)
    async def usage(request: Request, name: str) -> ServiceUsage:
        """CPU (cores) and resident memory (bytes) per replica, sampled every few seconds."""
        return await _fleet(request).usage(name)

    @router.get("/faults", response_model=list[Fault], responses=NOT_FOUND)
    async def faults(request: Request, service: Annotated[str | None, Query()] = None) -> list[Fault]:
        """Faults in effect and recently ended, optionally for one service."""
        return await _fleet(request).faults(service)

    @router.get("/faults/{fault_id}", response_model=Fault, responses=NOT_FOUND)
    async def fault(request: Request, fault_id: str) -> Fault:
        return _fleet(request).book.get(fault_id)

    @router.post("/faults", response_model=Fault, status_code=201, responses=CHANGE_ERRORS)
    async def inject(request: Request, token: OperateToken, fault_request: FaultRequest) -> Fault:
        """Inject a fault for ``ttlS`` seconds at most; the fleet ends it by itself when the time is up."""
        return await _fleet(request).inject(fault_request)

    @router.delete("/faults/{fault_id}", response_model=Fault, responses=NOT_FOUND)
    async def revert(request: Request, token: OperateToken, fault_id: str) -> Fault | None:
        """End a fault now; a fault already ended is returned as it is."""
        return await _fleet(request).revert(fault_id)

    return router
