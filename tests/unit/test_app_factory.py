"""The app factory: health, metrics, docs, the JSON error format, request ids and structured logs, over real HTTP."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from support.net import threaded_http

from tmsops.app import add_health_check, create_app
from tmsops.errors import PermanentError, TemporaryError
from tmsops.health import HealthCheck
from tmsops.logs import JsonLogFormatter
from tmsops.settings import CoreSettings


class ServiceNotDeclared(PermanentError):
    http_status = 404


class ReadyModelServer(BaseHTTPRequestHandler):
    """The model server's readiness endpoint, at the HTTP boundary."""

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def model_server() -> Iterator[str]:
    with threaded_http(ReadyModelServer) as url:
        yield url


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CoreSettings:
    for name in [name for name in os.environ if name.startswith("TMSOPS_")]:
        monkeypatch.delenv(name)
    return CoreSettings(state_dir=tmp_path / "state", model_server_url=closed_port_url())


def service_app(settings: CoreSettings) -> FastAPI:
    app = create_app("test-service", settings, version="1.2.3")

    @app.get("/things/{thing_id}")
    async def thing(thing_id: int, verbose: bool = False) -> dict[str, int]:
        return {"id": thing_id}

    @app.get("/broken")
    async def broken() -> None:
        raise RuntimeError("connection string postgresql://ops:hunter2@db")

    @app.get("/warming-up")
    async def warming_up() -> None:
        raise TemporaryError("the forecaster is loading", retry_after=2.5)

    @app.get("/services/{name}")
    async def service(name: str) -> None:
        raise ServiceNotDeclared(f"no service {name!r} in tmsops.yaml", details={"service": name})

    return app


@pytest.fixture
def app(settings: CoreSettings) -> FastAPI:
    return service_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def error_of(response: object) -> dict[str, object]:
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    return body["error"]


# The JSON error format


def test_unknown_path_is_a_json_404(client: TestClient) -> None:
    response = client.get("/nowhere")

    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_wrong_method_is_a_json_405(client: TestClient) -> None:
    response = client.delete("/health")

    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"


def test_validation_error_is_a_422_naming_the_field(client: TestClient) -> None:
    response = client.get("/things/seven", params={"verbose": "perhaps"})

    error = error_of(response)
    assert response.status_code == 422 and error["code"] == "validation_error"
    assert "path.thing_id" in str(error["message"]) and "query.verbose" in str(error["message"])
    assert [problem["field"] for problem in error["details"]["errors"]] == ["path.thing_id", "query.verbose"]  # type: ignore[index]


def test_an_unhandled_error_is_a_500_with_a_request_id_and_no_leak(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="tmsops"):
        response = client.get("/broken", headers={"X-Request-ID": "req-500"})

    error = error_of(response)
    assert response.status_code == 500 and error["code"] == "internal_error"
    assert error["details"] == {"request_id": "req-500"} and "req-500" in str(error["message"])
    assert "hunter2" not in response.text and "Traceback" not in response.text
    logged = json.loads(JsonLogFormatter().format(caplog.records[-1]))
    assert logged["request_id"] == "req-500" and "hunter2" in logged["traceback"]


def test_a_temporary_error_is_a_503_with_retry_after(client: TestClient) -> None:
    response = client.get("/warming-up")

    assert response.status_code == 503 and response.headers["Retry-After"] == "3"
    assert error_of(response) == {"code": "temporary_error", "message": "the forecaster is loading", "details": {}}


def test_a_permanent_error_keeps_its_status_code_and_details(client: TestClient) -> None:
    response = client.get("/services/billing")

    assert response.status_code == 404
    assert error_of(response)["code"] == "service_not_declared"
    assert error_of(response)["details"] == {"service": "billing"}


# Request ids and structured logs


def test_the_request_id_is_echoed_or_made(client: TestClient) -> None:
    echoed = client.get("/things/1", headers={"X-Request-ID": "trace-42"}).headers["X-Request-ID"]
    made = client.get("/things/1").headers["X-Request-ID"]
    replaced = client.get("/things/1", headers={"X-Request-ID": "no spaces allowed"}).headers["X-Request-ID"]

    assert echoed == "trace-42"
    assert len(made) == 32 and len(replaced) == 32 and made != replaced


def test_one_json_log_line_per_request(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tmsops.http"):
        client.get("/things/5", headers={"X-Request-ID": "log-me"})

    [record] = [record for record in caplog.records if record.name == "tmsops.http"]
    line = json.loads(JsonLogFormatter().format(record))
    assert line["request_id"] == "log-me" and line["method"] == "GET" and line["path"] == "/things/5"
    assert line["route"] == "/things/{thing_id}" and line["status"] == 200 and line["duration_ms"] >= 0


# Metrics


def scraped(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_requests_by_route_template_and_status(client: TestClient) -> None:
    for thing_id in (1, 2, 3):
        client.get(f"/things/{thing_id}")
    client.get("/nowhere")

    samples = scraped(client)

    ok = (("method", "GET"), ("route", "/things/{thing_id}"), ("status", "200"))
    assert samples[("tmsops_http_requests_total", ok)] == 3
    unmatched = (("method", "GET"), ("route", "<unmatched>"), ("status", "404"))
    assert samples[("tmsops_http_requests_total", unmatched)] == 1
    latency = (("method", "GET"), ("route", "/things/{thing_id}"))
    assert samples[("tmsops_http_request_duration_seconds_count", latency)] == 3
    assert samples[("tmsops_service_info", (("service", "test-service"), ("version", "1.2.3")))] == 1


def test_each_app_has_its_own_registry(settings: CoreSettings, client: TestClient) -> None:
    client.get("/things/1")
    with TestClient(service_app(settings)) as other:
        samples = scraped(other)

    assert not any(
        name == "tmsops_http_requests_total" and ("route", "/things/{thing_id}") in labels for name, labels in samples
    )


# Health


def test_health_is_ok_when_every_check_passes(settings: CoreSettings, model_server: str) -> None:
    with TestClient(service_app(settings.model_copy(update={"model_server_url": model_server}))) as client:
        response = client.get("/health")

    body = response.json()
    assert response.status_code == 200 and body["status"] == "ok"
    assert (body["service"], body["version"]) == ("test-service", "1.2.3")
    assert {check["name"] for check in body["checks"]} == {"store writable", "model server reachable"}


def test_health_is_degraded_when_the_model_server_is_unreachable(client: TestClient) -> None:
    response = client.get("/health")

    checks = {check["name"]: check for check in response.json()["checks"]}
    assert response.status_code == 200 and response.json()["status"] == "degraded"
    assert not checks["model server reachable"]["ok"] and checks["store writable"]["ok"]


def test_health_is_down_when_the_store_is_gone(app: FastAPI, client: TestClient, settings: CoreSettings) -> None:
    app.state.engine.dispose()
    shutil.rmtree(settings.state_dir)

    response = client.get("/health")

    checks = {check["name"]: check for check in response.json()["checks"]}
    assert response.status_code == 503 and response.json()["status"] == "down"
    assert not checks["store writable"]["ok"]


def test_services_add_named_checks(app: FastAPI, client: TestClient) -> None:
    async def fleet_supervisor() -> str:
        raise ConnectionError("supervisor not running")

    async def queue() -> str:
        return "12 jobs waiting"

    add_health_check(app, HealthCheck("fleet supervisor", fleet_supervisor, critical=True))
    add_health_check(app, HealthCheck("queue", queue, critical=False))

    response = client.get("/health")

    checks = {check["name"]: check for check in response.json()["checks"]}
    assert response.status_code == 503 and response.json()["status"] == "down"
    assert checks["fleet supervisor"]["detail"] == "ConnectionError: supervisor not running"
    assert checks["queue"] == {**checks["queue"], "ok": True, "detail": "12 jobs waiting"}


# Docs and the service's own lifespan


def test_openapi_docs_list_the_core_routes_and_the_bearer_scheme(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()

    assert client.get("/docs").status_code == 200
    assert {"/health", "/metrics", "/audit"} <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_the_service_lifespan_runs_inside_the_core_one(settings: CoreSettings) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def supervisor(app: FastAPI) -> AsyncIterator[None]:
        events.append("started")
        yield
        events.append("stopped")

    with TestClient(create_app("svc", settings, version="1", lifespan=supervisor)) as client:
        assert client.get("/health").status_code == 200
        assert events == ["started"]
    assert events == ["started", "stopped"]


def test_an_unprotected_change_in_an_included_router_is_refused(settings: CoreSettings) -> None:
    from fastapi import APIRouter

    router = APIRouter()

    @router.post("/unprotected")
    async def unprotected() -> dict[str, str]:
        return {}

    app = create_app("svc", settings, version="1")
    app.include_router(router)
    with pytest.raises(PermanentError, match="POST /unprotected changes state but declares no scope"), TestClient(app):
        pass
