"""The chaos service's HTTP API (port 8013): experiments, ad hoc faults, safety and the dashboard.

Experiment and injection bodies are JSON or YAML (``Content-Type: application/yaml``); an
invalid one is a 422 whose ``details.errors`` names every bad field. Mutations need scope
``operate`` (re-arming the emergency stop: ``admin``) and are audited by the app factory,
refused or not. Starting answers 202 once the safety checks passed (the run goes on in the
background; ``GET /experiments/{id}`` follows it), or 200 with the plan for a dry run. An ad hoc
fault (``POST /faults/inject``) is journaled as an experiment of kind ``adhoc`` before its checks,
so a refused one stays ``created`` with the refusal in its journal.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from chaos.dashboard import dashboard_data, render_dashboard, service_scores
from chaos.experiment import (
    AdHocInjection,
    Experiment,
    fault_types_catalog,
    parse_experiment,
    parse_injection,
    read_document,
)
from chaos.journal import ExperimentRecord, InjectionRecord, ProbeRecord, Record, Status
from chaos.runner import DryRun, Runner
from tmsops.auth import AdminToken, OperateToken
from tmsops.http_docs import ResponsesSpec, error_responses

YAML_OR_JSON = ("application/json", "application/yaml")
# Starting: an unknown experiment or service (404), a busy service or an engaged stop (409), a
# safety rule (422), a target that refuses (502) or is down (503); a dry run answers its plan (200).
DRY_RUN_PLAN: ResponsesSpec = {200: {"model": DryRun, "description": "the plan of a dry run"}}
START_ERRORS = {**error_responses(404, 409, 502, 503), **DRY_RUN_PLAN}
# The body is read by the route (JSON or YAML): a bad one is a 422, another content type a 415.
DOCUMENT_ERRORS = error_responses(415, 422)
DASHBOARD_JSON: ResponsesSpec = {200: {"content": {"application/json": {"schema": {"type": "object"}}}}}


class RequestBody(Record):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid", strict=True)


class StartRequest(RequestBody):
    dry_run: bool = False


class StopRequest(RequestBody):
    reason: str = Field("emergency stop", max_length=500)


class Resilience(Record):
    experiment: float | None = Field(description="weighted probe success of this experiment, 0..100")
    service: float | None = Field(description="weighted mean of the service's finished experiments, 0..100")


class JournalEntry(Record):
    at: datetime
    kind: str
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class ExperimentDetail(Record):
    experiment: ExperimentRecord
    resilience: Resilience
    injections: list[InjectionRecord]
    probes: list[ProbeRecord]
    journal: list[JournalEntry]


class EmergencyStopState(Record):
    enabled: bool
    engaged: bool
    at: str | None = None
    by: str | None = None
    reason: str | None = None


class SafetyStatus(Record):
    emergency_stop: EmergencyStopState
    limits: dict[str, Any]
    busy_services: dict[str, str]
    running: list[str]
    recovering: list[str]
    open_injections: list[InjectionRecord]
    pending_rollbacks: int


def _runner(request: Request) -> Runner:
    runner: Runner = request.app.state.runner
    return runner


def _body_schema(model: type[Record] | type[Experiment] | type[AdHocInjection]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True)
    return {"requestBody": {"required": True, "content": {kind: {"schema": schema} for kind in YAML_OR_JSON}}}


def router() -> APIRouter:
    routes = APIRouter(tags=["chaos"])
    _experiment_routes(routes)
    _fault_routes(routes)
    _safety_routes(routes)

    @routes.get("/dashboard", response_model=None, response_class=HTMLResponse, responses=DASHBOARD_JSON)
    async def dashboard(request: Request) -> Response:
        """Timeline of experiments with probe results and rollbacks: HTML, or JSON for Accept: application/json."""
        runner = _runner(request)
        data = dashboard_data(runner.journal, runner.safety)
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse(data)
        return HTMLResponse(render_dashboard(data, request.app.state.settings.ports))

    return routes


def _experiment_routes(routes: APIRouter) -> None:
    @routes.get("/experiments", response_model=list[ExperimentRecord])
    async def experiments(
        request: Request,
        status: Annotated[list[Status], Query()] = [],  # noqa: B006 (FastAPI reads the default, never mutates it)
        service: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[ExperimentRecord]:
        """Experiments and ad hoc faults, newest first."""
        return _runner(request).journal.experiments(
            status=[item.value for item in status], service=service, limit=limit
        )

    @routes.post(
        "/experiments",
        response_model=ExperimentRecord,
        status_code=201,
        openapi_extra=_body_schema(Experiment),
        responses=DOCUMENT_ERRORS,
    )
    async def create(request: Request, token: OperateToken) -> ExperimentRecord:
        """Validate and store an experiment (JSON or YAML); it starts with POST /experiments/{id}/start."""
        experiment = parse_experiment(read_document(await request.body(), request.headers.get("content-type")))
        spec = experiment.model_dump(mode="json", by_alias=True)
        return _runner(request).journal.create(spec, kind="experiment", created_by=token.id)

    @routes.get("/experiments/{experiment_id}", response_model=ExperimentDetail, responses=error_responses(404))
    async def experiment(request: Request, experiment_id: str) -> ExperimentDetail:
        """The experiment with its journal: status, probe results, injections and rollbacks with times, score."""
        return _detail(_runner(request), experiment_id)

    @routes.post(
        "/experiments/{experiment_id}/start",
        response_model=ExperimentRecord | DryRun,
        status_code=202,
        responses=START_ERRORS,
    )
    async def start(
        request: Request,
        response: Response,
        token: OperateToken,
        experiment_id: str,
        body: Annotated[StartRequest | None, Body()] = None,
    ) -> ExperimentRecord | DryRun:
        """Check the safety rules and the steady state, then run; ``dryRun`` checks and plans, injecting nothing."""
        dry_run = body is not None and body.dry_run
        result = await _runner(request).start(experiment_id, dry_run=dry_run, by=token.name)
        if dry_run:
            response.status_code = 200
        return result

    @routes.post(
        "/experiments/{experiment_id}/stop", response_model=ExperimentRecord, responses=error_responses(404, 409)
    )
    async def stop(request: Request, token: OperateToken, experiment_id: str) -> ExperimentRecord:
        """Abort a running experiment and roll it back; answers once it has ended."""
        return await _runner(request).stop(experiment_id, by=token.name)


def _fault_routes(routes: APIRouter) -> None:
    @routes.get("/faults/types")
    async def fault_types() -> list[dict[str, Any]]:
        """The six fault types with their parameters' JSON schema, the target fault each becomes, and its scope."""
        return fault_types_catalog()

    @routes.post(
        "/faults/inject",
        response_model=ExperimentRecord | DryRun,
        status_code=202,
        openapi_extra=_body_schema(AdHocInjection),
        responses={**START_ERRORS, **DOCUMENT_ERRORS},
    )
    async def inject(request: Request, response: Response, token: OperateToken) -> ExperimentRecord | DryRun:
        """Inject one fault now for ``duration`` at most, under the safety rules (journaled as an adhoc experiment)."""
        injection = parse_injection(read_document(await request.body(), request.headers.get("content-type")))
        runner = _runner(request)
        spec = injection.as_experiment().model_dump(mode="json", by_alias=True)
        record = runner.journal.create(spec, kind="adhoc", created_by=token.id)
        result = await runner.start(record.id, dry_run=injection.dry_run, by=token.name)
        if injection.dry_run:
            response.status_code = 200
        return result


def _safety_routes(routes: APIRouter) -> None:
    @routes.get("/safety/status", response_model=SafetyStatus)
    async def safety_status(request: Request) -> SafetyStatus:
        """The emergency stop, the limits, what runs, and every injection not yet confirmed reverted."""
        return _safety_status(_runner(request))

    @routes.post("/safety/emergency-stop", responses=error_responses(409))
    async def emergency_stop(
        request: Request, token: OperateToken, body: Annotated[StopRequest | None, Body()] = None
    ) -> dict[str, Any]:
        """Revert every active fault of every experiment and refuse new ones until an admin re-arms."""
        reason = body.reason if body is not None else "emergency stop"
        return await _runner(request).emergency_stop(token.name, reason)

    @routes.post("/safety/rearm", response_model=SafetyStatus)
    async def rearm(request: Request, token: AdminToken) -> SafetyStatus:
        """Release the emergency stop (scope admin): experiments may start again."""
        runner = _runner(request)
        runner.safety.rearm(token.name)
        return _safety_status(runner)


def _detail(runner: Runner, experiment_id: str) -> ExperimentDetail:
    journal = runner.journal
    record = journal.get(experiment_id)
    probes = journal.probes(experiment_id)
    entries = [
        JournalEntry(at=event.at, kind=event.kind, message=event.message, data=event.data)
        for event in journal.events(experiment_id)
    ]
    entries += [_probe_entry(probe) for probe in probes]
    resilience = Resilience(experiment=record.score, service=service_scores(journal).get(record.service))
    return ExperimentDetail(
        experiment=record,
        resilience=resilience,
        injections=journal.injections(experiment_id),
        probes=probes,
        journal=sorted(entries, key=lambda entry: entry.at),
    )


def _probe_entry(probe: ProbeRecord) -> JournalEntry:
    verdict = "passed" if probe.ok else "failed"
    message = f"probe {probe.probe} ({probe.phase}, round {probe.round}) {verdict}: {probe.detail}"
    return JournalEntry(at=probe.at, kind="probe", message=message, data={"ok": probe.ok, "value": probe.value})


def _safety_status(runner: Runner) -> SafetyStatus:
    state = runner.journal.read_state("emergency_stop") or {}
    return SafetyStatus(
        emergency_stop=EmergencyStopState(
            enabled=runner.safety.policy.emergency_stop_enabled,
            engaged=bool(state.get("engaged")),
            at=state.get("at"),
            by=state.get("by"),
            reason=state.get("reason"),
        ),
        limits=runner.safety.policy.describe(),
        busy_services=dict(runner.safety.busy),
        running=sorted(runner.runs),
        recovering=sorted(runner.recovering),
        open_injections=runner.journal.injections(open_only=True),
        pending_rollbacks=runner.rollbacks.pending,
    )
