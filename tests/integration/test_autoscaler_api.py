"""The autoscaler service over real HTTP, acting on a real fleet, with the real model server (context 48)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from support.net import free_port

from actuators.autoscaler.loop import Autoscaler
from actuators.autoscaler.service import build_app
from tmsops.app import api_routes
from tmsops.audit import AuditQuery
from tmsops.auth import Scope, service_token
from tmsops.fleet.supervisor import Fleet
from tmsops.settings import AutoscalerSettings, FleetConfig, FleetService

pytestmark = [pytest.mark.anyio, pytest.mark.xdist_group("model-server")]


@dataclass
class Running:
    app: FastAPI
    client: httpx.AsyncClient
    fleet: Fleet
    operator: dict[str, str]

    @property
    def scaler(self) -> Autoscaler:
        scaler: Autoscaler = self.app.state.autoscaler
        return scaler

    async def ticks(self, count: int, pause_s: float = 0.06) -> None:
        for _ in range(count):
            await self.scaler.tick()
            await asyncio.sleep(pause_s)


async def serve(app: FastAPI, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    return server, task


async def running_autoscaler(tmp_path: Path, model_server: str) -> AsyncIterator[Running]:
    echo = FleetService(
        command=["{python}", "-m", "tmsops.fleet.echo"], port=free_port(), max_replicas=4, cpu_request="100m"
    )
    fleet = Fleet(FleetConfig(services={"echo": echo}, usage_interval=0.5), state_dir=tmp_path)
    await fleet.start()
    # The policy allows more replicas than the service itself (4): the service's own bound wins.
    scaling = {"mode": "forecastAndScale", "interval": 0.05, "forecastStep": 0.05, "maxReplicas": 6}
    no_prometheus = f"http://127.0.0.1:{free_port()}"  # no history before the start: the tests fill it live
    settings = AutoscalerSettings(
        state_dir=tmp_path, model_server_url=model_server, prometheus_url=no_prometheus, scaling=scaling
    )
    app = build_app(settings, target=fleet, run_loop=False)
    port = free_port()
    server, task = await serve(app, port)
    operator = {"Authorization": f"Bearer {service_token(app.state.tokens, 'operator')}"}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield Running(app, client, fleet, operator)
    finally:
        server.should_exit = True
        await task
        await fleet.stop()


@pytest.fixture
async def running(tmp_path: Path, model_server_url: str) -> AsyncIterator[Running]:
    async for value in running_autoscaler(tmp_path, model_server_url):
        yield value


@pytest.fixture
async def without_models(tmp_path: Path) -> AsyncIterator[Running]:
    async for value in running_autoscaler(tmp_path, f"http://127.0.0.1:{free_port()}"):
        yield value


async def test_post_scale_sets_replicas_and_records_it(running: Running) -> None:
    answer = await running.client.post(
        "/scale",
        json={"service": "echo", "action": "set", "replicas": 3, "reason": "load test"},
        headers=running.operator,
    )
    assert answer.status_code == 200, answer.text
    assert (answer.json()["previous"], answer.json()["status"]["readyReplicas"]) == (1, 3)
    down = await running.client.post(
        "/scale", json={"service": "echo", "action": "scale_down"}, headers=running.operator
    )
    assert down.json()["replicas"] == 2
    records = (await running.client.get("/decisions", params={"service": "echo"})).json()
    assert [(record["source"], record["desired"], record["reason"]) for record in records[:2]] == [
        ("api", 2, "manual request"),
        ("api", 3, "load test"),
    ]


async def test_concurrent_scale_requests_are_serialised_not_lost(running: Running) -> None:
    bodies = [{"service": "echo", "action": "scale_up", "replicas": 1} for _ in range(2)]
    answers = await asyncio.gather(
        *(running.client.post("/scale", json=body, headers=running.operator) for body in bodies)
    )
    assert [answer.status_code for answer in answers] == [200, 200]
    assert (await running.fleet.service("echo")).ready_replicas == 3


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"service": "nope", "action": "set", "replicas": 2}, 404, "unknown service 'nope'"),
        (
            {"service": "echo", "action": "set", "replicas": 9},
            422,
            "9 replicas is outside minReplicas 1 .. maxReplicas 4",
        ),
        ({"service": "echo", "action": "double", "replicas": 2}, 422, "action: Input should be 'scale_up'"),
        ({"service": "echo", "action": "set"}, 422, "replicas is required when action is set"),
        ({"service": "echo", "action": "scale_down"}, 422, "0 replicas is outside"),
    ],
)
async def test_bad_scale_requests_are_refused_and_audited(
    running: Running, body: dict[str, Any], status: int, message: str
) -> None:
    answer = await running.client.post("/scale", json=body, headers=running.operator)
    assert answer.status_code == status
    assert message in answer.json()["error"]["message"]
    entries = running.app.state.audit_log.query(AuditQuery(path_prefix="/scale"))
    assert [(entry.result, entry.status_code) for entry in entries] == [("failed", status)]


async def test_every_mutating_route_refuses_missing_and_under_scoped_tokens(running: Running) -> None:
    routes = [
        (method, route.path) for route in api_routes(running.app.routes) for method in route.methods - {"GET", "HEAD"}
    ]
    assert routes == [("POST", "/scale")]
    reader = {"Authorization": f"Bearer {service_token(running.app.state.tokens, 'viewer', Scope.READ)}"}
    body = {"service": "echo", "action": "set", "replicas": 2}
    assert (await running.client.post("/scale", json=body)).status_code == 401
    assert (await running.client.post("/scale", json=body, headers=reader)).status_code == 403
    entries = running.app.state.audit_log.query(AuditQuery(path_prefix="/scale"))
    assert sorted(entry.status_code for entry in entries if entry.result == "refused") == [401, 403]
    assert (await running.fleet.service("echo")).replicas == 1


async def test_the_loop_forecasts_recommends_and_explains(running: Running) -> None:
    before = await running.client.get("/predictions", params={"service": "echo"})
    assert before.status_code == 422 and "more steps of demand history needed" in before.json()["error"]["message"]
    async with httpx.AsyncClient() as load:
        port = running.fleet.config.services["echo"].port
        traffic = asyncio.create_task(_traffic(load, port, seconds=6.0))
        await running.ticks(80)
        await traffic
    prediction = await running.client.get("/predictions", params={"service": "echo", "timeHorizon": "0.2s"})
    assert prediction.status_code == 200, prediction.text
    body = prediction.json()
    assert len(body["p50"]) == 4 and body["model_version"] == "1"
    too_far = await running.client.get("/predictions", params={"service": "echo", "timeHorizon": "1h"})
    assert too_far.status_code == 422 and "the model forecasts 1 to 6" in too_far.json()["error"]["message"]
    unknown = await running.client.get("/predictions", params={"service": "nope"})
    assert unknown.status_code == 404
    recommendation = (await running.client.get("/recommendations")).json()
    assert recommendation[0]["service"] == "echo" and recommendation[0]["reason"]
    cost = (await running.client.get("/cost-analysis", params={"window": "1h"})).json()
    assert cost["total"]["actual_replica_hours"] > 0
    bad_window = await running.client.get("/cost-analysis", params={"window": "soon"})
    assert bad_window.status_code == 422 and "window" in bad_window.json()["error"]["message"]
    anomalies = await running.client.get("/anomalies")
    assert anomalies.status_code == 200 and isinstance(anomalies.json(), list)
    page = await running.client.get("/dashboard")
    assert page.status_code == 200 and "tmsopsChart" in page.text
    data = (await running.client.get("/dashboard", headers={"Accept": "application/json"})).json()
    assert data["services"][0]["name"] == "echo" and data["services"][0]["demand"]
    bounds = (data["services"][0]["min_replicas"], data["services"][0]["max_replicas"])
    assert bounds == (1, 4) and data["max_replicas"] == 6  # the service's own bounds, not the policy's
    await running.app.state.autoscaler.close_when_idle()
    metrics = (await running.client.get("/metrics")).text
    decisions = (await running.client.get("/decisions", params={"service": "echo", "limit": 1000})).json()
    last = running.app.state.autoscaler.services["echo"].decision
    assert f'tmsops_autoscaler_replicas{{service="echo"}} {float(last.current)}' in metrics
    assert f'tmsops_autoscaler_desired_replicas{{service="echo"}} {float(last.desired)}' in metrics
    assert 'tmsops_autoscaler_reactive_only{service="echo"} 0.0' in metrics  # the forecast was used
    applied = sum(1 for d in decisions if d["source"] == "loop" and d["applied"] and d["desired"] != d["current"])
    exported = re.search(r'tmsops_autoscaler_loop_changes_total\{outcome="applied",service="echo"\} (\S+)', metrics)
    assert (float(exported.group(1)) if exported else 0.0) == applied
    assert (await running.client.get("/static/charts.js")).status_code == 200
    assert (await running.client.get("/health")).json()["status"] == "ok"


async def _traffic(client: httpx.AsyncClient, port: int, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        await client.get(f"http://127.0.0.1:{port}/echo")
        await asyncio.sleep(0.01)


async def test_without_the_model_server_the_loop_is_reactive_and_health_degraded(without_models: Running) -> None:
    await without_models.ticks(3)
    health = (await without_models.client.get("/health")).json()
    assert health["status"] == "degraded"
    assert {check["name"]: check["ok"] for check in health["checks"]}["forecasts"] is False
    record = (await without_models.client.get("/decisions")).json()[0]
    assert record["fallback"].startswith("model server:") and "reactive only" in record["reason"]
