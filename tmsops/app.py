"""The app factory every tmsops service uses.

:func:`create_app` gives a FastAPI app with ``GET /health``, ``GET /metrics`` (Prometheus,
a registry per app), ``GET /audit`` (scope read), OpenAPI at ``/docs`` with its error answers
documented (:mod:`tmsops.http_docs`), the JSON error format, an ``X-Request-ID`` on every
response, one JSON log line per request, and the
audit of every attempt on a route protected by :func:`tmsops.auth.require`. With an OTLP
endpoint configured, requests (but ``/health`` and ``/metrics``) and outgoing httpx calls are
traced (:mod:`tmsops.tracing`); the spans are flushed when the app stops.

At startup the app refuses to run a route that changes state without declaring a scope,
and shows the first admin token once (or registers ``admin_token`` from the settings).
"""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute

from tmsops.audit import AuditAttempt, AuditEntry, AuditLog, AuditQuery, AuditResult
from tmsops.auth import (
    CONFIGURED_ADMIN_NAME,
    SAFE_METHODS,
    ReadToken,
    Scope,
    TokenStore,
    declared_scope,
    first_admin_secret,
    is_audited,
    redact,
)
from tmsops.errors import PermanentError
from tmsops.health import HealthCheck, HealthReport, model_server_reachable, overall_status, run_checks, store_writable
from tmsops.http_docs import ResponsesSpec, complete_document
from tmsops.http_errors import http_error, install_error_handlers, internal_error_response, status_phrase
from tmsops.http_metrics import HttpMetrics
from tmsops.logs import configure_logging
from tmsops.settings import CoreSettings
from tmsops.state import make_engine
from tmsops.tracing import Tracing, install_tracing

REQUEST_ID_HEADER = "X-Request-ID"
STATIC_DIR = Path(__file__).parent / "static"
_ACCEPTED_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
CallNext = Callable[[Request], Awaitable[Response]]

log = logging.getLogger("tmsops.http")


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    limit: int
    offset: int


def create_app(name: str, settings: CoreSettings, *, version: str, lifespan: Lifespan | None = None) -> FastAPI:
    """A FastAPI app for the service ``name``; ``lifespan`` is the service's own startup and shutdown."""
    configure_logging(settings.log_level)
    app = FastAPI(
        title=f"tmsops {name}",
        version=version,
        debug=settings.debug,
        lifespan=_core_lifespan(name, settings, lifespan),
    )
    _attach_state(app, name, settings, version)
    app.state.tracing = install_tracing(app, name, settings.tracing, version=version)
    install_error_handlers(app)
    app.add_exception_handler(405, _method_not_allowed)  # type: ignore[arg-type]
    app.openapi = functools.partial(_openapi, app)  # type: ignore[method-assign]
    app.middleware("http")(_observe)
    app.include_router(_core_router())
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def add_health_check(app: FastAPI, check: HealthCheck) -> None:
    """Add a named check to ``GET /health``."""
    app.state.health_checks.append(check)


def _attach_state(app: FastAPI, name: str, settings: CoreSettings, version: str) -> None:
    engine = make_engine(settings.state_database_url)
    app.state.service = name
    app.state.settings = settings
    app.state.engine = engine
    app.state.tokens = TokenStore(engine)
    app.state.audit_log = AuditLog(engine)
    app.state.metrics = HttpMetrics(name, version)
    app.state.health_checks = [store_writable(engine), model_server_reachable(settings.model_server_url)]


def _core_lifespan(name: str, settings: CoreSettings, service_lifespan: Lifespan | None) -> Lifespan:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        refuse_unprotected_changes(app)
        _bootstrap_admin(name, app.state.tokens, settings)
        tracing: Tracing | None = app.state.tracing
        if tracing is not None:
            tracing.start()
        try:
            if service_lifespan is None:
                yield
            else:
                async with service_lifespan(app):
                    yield
        finally:
            app.state.engine.dispose()
            if tracing is not None:
                tracing.stop()

    return lifespan


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """Every API route, including those of included routers (which FastAPI keeps as one lazy entry)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from api_routes(included.routes)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, completed by :func:`tmsops.http_docs.complete_document`."""
    if app.openapi_schema is None:
        routes = api_routes(app.routes)
        protected = {
            (route.path, method)
            for route in routes
            if declared_scope(route.dependant)
            for method in route.methods or ()
        }
        app.openapi_schema = complete_document(FastAPI.openapi(app), protected)
    return app.openapi_schema


async def _method_not_allowed(request: Request, error: HTTPException) -> JSONResponse:
    """A 405 whose ``Allow`` names every method of the path (Starlette's names those of one route only)."""
    path = request.url.path
    methods = {
        method
        for route in api_routes(request.app.routes)
        if route.path_regex.match(path)
        for method in route.methods or ()
    }
    if methods:
        error.headers = {**(error.headers or {}), "Allow": ", ".join(sorted(methods))}
    return await http_error(request, error)


def refuse_unprotected_changes(app: FastAPI) -> None:
    """Raise if a route that changes state (a method other than GET, HEAD, OPTIONS) declares no scope."""
    for route in api_routes(app.routes):
        changing = sorted(set(route.methods or ()) - SAFE_METHODS)
        if changing and declared_scope(route.dependant) is None:
            methods = ",".join(changing)
            raise PermanentError(f"{methods} {route.path} changes state but declares no scope (Depends(require(...)))")


def _bootstrap_admin(name: str, tokens: TokenStore, settings: CoreSettings) -> None:
    """Register the configured admin token, or create the first one and print it once."""
    if settings.admin_token is not None:
        tokens.register(settings.admin_token.get_secret_value(), CONFIGURED_ADMIN_NAME, Scope.ADMIN)
        return
    secret = first_admin_secret(tokens)
    if secret is not None:
        print(f"tmsops {name}: first start; admin token (shown once, keep it): {secret}", flush=True)


def _core_router() -> APIRouter:
    router = APIRouter(tags=["core"])
    down: ResponsesSpec = {503: {"model": HealthReport, "description": "a critical check failed"}}
    router.add_api_route("/health", health, methods=["GET"], response_model=HealthReport, responses=down)
    router.add_api_route("/metrics", metrics, methods=["GET"], response_class=Response)
    router.add_api_route("/audit", audit, methods=["GET"], response_model=AuditPage)
    return router


async def health(request: Request) -> JSONResponse:
    """ok or degraded: 200; down (a critical check failed): 503."""
    reports = await run_checks(request.app.state.health_checks)
    status = overall_status(reports)
    report = HealthReport(status=status, service=request.app.state.service, version=request.app.version, checks=reports)
    return JSONResponse(report.model_dump(), status_code=503 if status == "down" else 200)


async def metrics(request: Request) -> Response:
    """Prometheus text exposition of this service's metrics (some read a journal: off the event loop)."""
    body = await run_in_threadpool(request.app.state.metrics.exposition)
    return Response(body, media_type=METRICS_CONTENT_TYPE)


async def audit(request: Request, token: ReadToken, filters: Annotated[AuditQuery, Query()]) -> AuditPage:
    """Audit entries, newest first."""
    entries = await run_in_threadpool(request.app.state.audit_log.query, filters)
    return AuditPage(entries=entries, limit=filters.limit, offset=filters.offset)


async def _observe(request: Request, call_next: CallNext) -> Response:
    """Request id, timing, metrics, audit and the access log of one request."""
    request_id = _request_id(request)
    request.state.request_id = request_id
    started = time.perf_counter()
    response = await _respond(request, call_next, request_id)
    duration_s = time.perf_counter() - started
    response.headers[REQUEST_ID_HEADER] = request_id
    route = _route_template(request)
    request.app.state.metrics.observe(route, request.method, response.status_code, duration_s)
    await _audit(request, response.status_code)
    _log_request(request, response.status_code, duration_s, route)
    return response


async def _respond(request: Request, call_next: CallNext, request_id: str) -> Response:
    try:
        return await call_next(request)
    except Exception:
        fields = {"request_id": request_id, "method": request.method, "path": request.url.path}
        log.exception("unhandled error", extra={"fields": fields})
        return internal_error_response(request, request_id)


def _request_id(request: Request) -> str:
    offered = request.headers.get(REQUEST_ID_HEADER, "")
    return offered if _ACCEPTED_REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex


def _route_template(request: Request) -> str | None:
    route = request.scope.get("route")
    return route.path if isinstance(route, APIRoute) else None


async def _audit(request: Request, status_code: int) -> None:
    route = request.scope.get("route")
    scope = declared_scope(route.dependant) if isinstance(route, APIRoute) else None
    if not is_audited(request.method, scope):
        return
    attempt = getattr(request.state, "audit_attempt", None) or _unread_attempt(request)
    entry = {
        "method": request.method,
        "path": request.url.path,
        "token_id": attempt.token_id,
        "parameters": attempt.parameters,
        "result": _result(attempt, status_code),
        "status_code": status_code,
        "message": getattr(request.state, "error_message", None) or status_phrase(status_code),
    }
    await run_in_threadpool(_append, request.app.state.audit_log, entry)


def _unread_attempt(request: Request) -> AuditAttempt:
    """The attempt of a request refused before its token was read (e.g. a body that is not JSON)."""
    return AuditAttempt(parameters=redact({"path": dict(request.path_params), "query": dict(request.query_params)}))


def _result(attempt: AuditAttempt, status_code: int) -> AuditResult:
    if attempt.refused:
        return AuditResult.REFUSED
    return AuditResult.ALLOWED if status_code < 400 else AuditResult.FAILED


def _append(audit_log: AuditLog, entry: dict[str, Any]) -> None:
    try:
        audit_log.append(**entry)
    except SQLAlchemyError:
        log.exception("audit entry lost", extra={"fields": {"audit_entry": entry}})


def _log_request(request: Request, status_code: int, duration_s: float, route: str | None) -> None:
    fields = {
        "request_id": request.state.request_id,
        "method": request.method,
        "path": request.url.path,
        "route": route,
        "status": status_code,
        "duration_ms": round(duration_s * 1000, 2),
    }
    log.info("%s %s %s", request.method, request.url.path, status_code, extra={"fields": fields})
