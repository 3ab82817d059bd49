"""The fleet's control API served by a real uvicorn, used through FleetTarget over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from support.net import free_port

from tmsops.app import api_routes
from tmsops.audit import AuditQuery
from tmsops.auth import Scope, TokenStore, service_token
from tmsops.fleet.api import build_app
from tmsops.settings import FleetConfig, FleetService, FleetSettings
from tmsops.targets.base import Forbidden, ReplicasOutOfRange, TargetUnavailable, UnknownFault, UnknownService
from tmsops.targets.fleet import FleetTarget
from tmsops.targets.model import FaultRequest, FaultState, Resources

pytestmark = [pytest.mark.anyio, pytest.mark.xdist_group("fleet")]


@dataclass
class Served:
    app: FastAPI
    url: str
    tokens: TokenStore


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    echo = FleetService(command=["{python}", "-m", "tmsops.fleet.echo"], port=free_port(), max_replicas=3)
    settings = FleetSettings(state_dir=tmp_path, fleet=FleetConfig(control_port=free_port(), services={"echo": echo}))
    app = build_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    try:
        yield Served(app, f"http://127.0.0.1:{settings.port}", app.state.tokens)
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def target(served: Served) -> AsyncIterator[FleetTarget]:
    client = FleetTarget(served.url, service_token(served.tokens, "autoscaler"))
    yield client
    await client.aclose()


async def test_the_target_interface_over_http(target: FleetTarget) -> None:
    assert [service.name for service in await target.list_services()] == ["echo"]
    status = await target.set_replicas("echo", 2)
    assert (status.replicas, status.ready_replicas) == (2, 2)
    resized = await target.set_resources("echo", Resources(cpu_request="250m", memory_limit="256Mi"))
    assert resized.resources == Resources(cpu_request=0.25, memory_limit=256 * 2**20)
    usage = await target.usage("echo")
    assert len(usage.replicas) == 2 and usage.memory_bytes > 0
    fault = await target.inject(
        FaultRequest(service="echo", fault={"type": "network_latency", "latency_ms": 10}, ttl_s=60)
    )
    assert [listed.id for listed in await target.faults("echo")] == [fault.id]
    reverted = await target.revert(fault.id)
    assert reverted is not None and reverted.state is FaultState.REVERTED


async def test_errors_keep_their_type_across_http(target: FleetTarget) -> None:
    with pytest.raises(UnknownService, match="unknown service 'nope'"):
        await target.service("nope")
    with pytest.raises(ReplicasOutOfRange, match="9 replicas is outside"):
        await target.set_replicas("echo", 9)
    with pytest.raises(UnknownFault):
        await target.revert("abc")


async def test_a_fleet_that_is_down_is_a_temporary_error() -> None:
    client = FleetTarget(f"http://127.0.0.1:{free_port()}", "token")
    with pytest.raises(TargetUnavailable) as raised:
        await client.list_services()
    await client.aclose()
    assert raised.value.retryable


async def test_a_bad_token_is_forbidden(served: Served) -> None:
    client = FleetTarget(served.url, "tmsops_not-a-token")
    with pytest.raises(Forbidden, match="refused the token"):
        await client.set_replicas("echo", 2)
    await client.aclose()


def mutating_routes(app: FastAPI) -> list[tuple[str, str]]:
    routes = list(api_routes(app.routes))
    return [(method, route.path) for route in routes for method in sorted(route.methods - {"GET", "HEAD"})]


async def test_every_mutating_route_refuses_missing_and_under_scoped_tokens_and_audits_both(served: Served) -> None:
    routes = mutating_routes(served.app)
    assert len(routes) == 4
    reader = {"Authorization": f"Bearer {service_token(served.tokens, 'dashboard', Scope.READ)}"}
    async with httpx.AsyncClient(base_url=served.url) as client:
        for method, path in routes:
            concrete = path.replace("{name}", "echo").replace("{fault_id}", "abc")
            missing = await client.request(method, concrete, json={})
            under = await client.request(method, concrete, json={}, headers=reader)
            assert (missing.status_code, under.status_code) == (401, 403), (method, path)
    entries = served.app.state.audit_log.query(AuditQuery(limit=100))
    refused = [(entry.method, entry.status_code) for entry in entries if entry.result == "refused"]
    assert sorted(refused) == sorted([(method, code) for method, _ in routes for code in (401, 403)])


async def test_metrics_hold_the_proxy_and_replica_figures(served: Served, target: FleetTarget) -> None:
    port = (await target.service("echo")).pods[0].address
    assert port is not None
    echo_port = served.app.state.fleet.config.services["echo"].port
    async with httpx.AsyncClient() as client:
        for _ in range(5):
            assert (await client.get(f"http://127.0.0.1:{echo_port}/echo")).status_code == 200
        text = (await client.get(f"{served.url}/metrics")).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("tmsops_proxy_requests_total", (("code", "200"), ("service", "echo")))] == 5
    assert samples[("tmsops_fleet_ready_replicas", (("service", "echo"),))] == 1
    assert samples[("tmsops_proxy_request_duration_seconds_count", (("service", "echo"),))] == 5
