"""The chaos service over real HTTP on a real fleet: routes, auth and audit, bad input, safety rules,
dry runs, aborts, the emergency stop, and the Prometheus and anomaly probes (those two servers are
in-test fakes at their HTTP boundary)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from support.chaos_env import (
    ChaosEnv,
    chaos_on,
    echo_service,
    free_port,
    http_probe,
    latency_experiment,
    tcp_echo,
    wait_for,
)
from support.net import threaded_http

from tmsops.app import api_routes
from tmsops.fleet.supervisor import Fleet
from tmsops.settings import FleetConfig

pytestmark = [pytest.mark.anyio, pytest.mark.xdist_group("chaos")]

MUTATING = {
    ("POST", "/experiments"),
    ("POST", "/experiments/{experiment_id}/start"),
    ("POST", "/experiments/{experiment_id}/stop"),
    ("POST", "/faults/inject"),
    ("POST", "/safety/emergency-stop"),
    ("POST", "/safety/rearm"),
}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    """Shared by the tests (each with its own chaos service and state store): echo with one replica,
    echo-b with two. Every test leaves no fault behind."""
    tmp_path = tmp_path_factory.mktemp("chaos-api-fleet")
    async with tcp_echo() as database:
        services = {
            "echo": echo_service(tmp_path, "echo", database, 1),
            "echo-b": echo_service(tmp_path, "echo-b", database, 2),
        }
        config = FleetConfig(control_port=free_port(), services=services, usage_interval=0.5, restart_backoff_max=2)
        running = Fleet(config, state_dir=tmp_path)
        await running.start()
        try:
            yield running
        finally:
            await running.stop()


@pytest.fixture
async def env(tmp_path: Path, fleet: Fleet) -> AsyncIterator[ChaosEnv]:
    async with chaos_on(tmp_path, fleet) as running:
        yield running


async def test_every_mutation_needs_its_scope_and_every_attempt_is_audited(env: ChaosEnv) -> None:
    routes = {
        (method, route.path)
        for route in api_routes(env.app.routes)
        for method in (route.methods or set()) - {"GET", "HEAD"}
    }
    assert routes == MUTATING
    for _, path in sorted(MUTATING):
        concrete = path.replace("{experiment_id}", "exp-x")
        assert (await env.client.post(concrete, json={})).status_code == 401
        assert (await env.client.post(concrete, json={}, headers=env.reader)).status_code == 403
    rearm = await env.client.post("/safety/rearm", headers=env.operator)
    assert rearm.status_code == 403 and "needs scope admin" in rearm.json()["error"]["message"]
    refused = [entry for entry in env.audit("/") if entry.result == "refused"]
    assert len(refused) == 2 * len(MUTATING) + 1
    assert {(entry.method, entry.status_code) for entry in refused} == {("POST", 401), ("POST", 403)}
    assert await env.active_faults() == []


async def test_bad_input_is_refused_naming_the_field_and_audited(env: ChaosEnv) -> None:
    cases: list[tuple[str, Any, int, str]] = [
        ("/experiments", latency_experiment(faultType="kill_all"), 422, "faultType: Input should be"),
        ("/experiments", latency_experiment(parameters={"latencyMs": "slow"}), 422, "parameters.latencyMs"),
        ("/experiments", latency_experiment(parameters={"latencyMs": 5, "x": 1}), 422, "parameters.x: Extra"),
        ("/experiments", latency_experiment(duration=None), 422, "duration"),
        ("/faults/inject", {"target": {"service": "echo"}, "faultType": "nope", "duration": 5}, 422, "faultType"),
        ("/faults/inject", {"target": {"service": "echo"}, "faultType": "cpu_stress"}, 422, "duration: Field required"),
        ("/faults/inject", {"target": {"service": "ghost"}, "faultType": "cpu_stress", "duration": 5}, 404, "ghost"),
    ]
    for path, body, status, message in cases:
        answer = await env.client.post(path, json=body, headers=env.operator)
        assert answer.status_code == status, (body, answer.text)
        assert message in answer.json()["error"]["message"], answer.text
    not_json = await env.client.post(
        "/experiments", content=b"{oops", headers={**env.operator, "Content-Type": "application/json"}
    )
    assert not_json.status_code == 422 and "body: not valid JSON" in not_json.json()["error"]["message"]
    csv = await env.client.post("/experiments", content=b"a,b", headers={**env.operator, "Content-Type": "text/csv"})
    assert csv.status_code == 415
    unknown_target = await env.create(latency_experiment(target={"service": "ghost"}))
    answer = await env.client.post(f"/experiments/{unknown_target}/start", headers=env.operator)
    assert answer.status_code == 404 and "unknown service 'ghost'" in answer.json()["error"]["message"]
    unsupported = await env.create(
        latency_experiment(faultType="database_slow", parameters={"dependency": "redis", "latencyMs": 5})
    )
    answer = await env.client.post(f"/experiments/{unsupported}/start", headers=env.operator)
    assert answer.status_code == 202
    detail = await env.finished(unsupported)
    assert detail["experiment"]["status"] == "failed"
    assert "has no dependency 'redis'" in detail["experiment"]["reason"]
    assert [item["state"] for item in detail["injections"]] == ["failed"]
    failed = [(entry.path, entry.status_code) for entry in env.audit("/") if entry.result == "failed"]
    assert len(failed) == len(cases) + 3 and ("/faults/inject", 404) in failed
    assert (await env.client.get("/experiments/exp-none")).status_code == 404
    assert await env.active_faults() == []


async def test_a_yaml_experiment_dry_run_resolves_targets_and_injects_nothing(tmp_path: Path, fleet: Fleet) -> None:
    before = len(await fleet.faults())
    async with chaos_on(tmp_path, fleet, safety={"blastRadiusLimit": 50}) as env:
        yaml_body = f"""
name: half the replicas
target: {{service: echo-b, mode: percent, value: 50}}
faultType: service_unavailable
parameters: {{mode: error, status: 502}}
duration: 20s
steadyState:
  probes:
    - {{type: http, name: answers, url: "{env.url("/echo", "echo-b")}", expectedStatus: 200}}
"""
        headers = {**env.operator, "Content-Type": "application/yaml"}
        created = await env.client.post("/experiments", content=yaml_body.encode(), headers=headers)
        assert created.status_code == 201, created.text
        experiment_id = created.json()["id"]
        plan = await env.client.post(f"/experiments/{experiment_id}/start", json={"dryRun": True}, headers=env.operator)
        assert plan.status_code == 200, plan.text
        body = plan.json()
        assert len(body["runningReplicas"]) == 2 and len(body["reachedReplicas"]) == 1
        assert body["blastRadiusPercent"] == 50 and body["fault"]["fault"]["status"] == 502
        assert [result["ok"] for result in body["steadyState"]] == [True]
        detail = await env.detail(experiment_id)
        assert detail["experiment"]["status"] == "created" and detail["injections"] == []
        assert "dry run: would reach" in " ".join(entry["message"] for entry in detail["journal"])
        adhoc = {"target": {"service": "echo-b"}, "faultType": "cpu_stress", "duration": "5s", "dryRun": True}
        answer = await env.client.post("/faults/inject", json=adhoc, headers=env.operator)
        assert answer.status_code == 200 and len(answer.json()["reachedReplicas"]) == 1
        assert len(await fleet.faults()) == before


async def test_each_safety_rule_refuses_with_a_4xx_naming_it_and_an_audit_entry(tmp_path: Path, fleet: Fleet) -> None:
    one = {"service": "echo-b", "mode": "one"}
    cases = [
        (latency_experiment(target=one, duration="31m"), 422, "maxExperimentDuration"),
        (latency_experiment(target={"service": "echo-b", "mode": "all"}), 422, "blastRadiusLimit"),
        (latency_experiment(target={"service": "echo"}), 422, "allowList"),
        (latency_experiment(target={"service": "vault"}), 422, "denyList"),
        (latency_experiment(target={"service": "echo-b", "mode": "fixed", "value": 3}), 422, "runningReplicas"),
    ]
    before = len(await fleet.faults())
    async with chaos_on(
        tmp_path, fleet, safety={"blastRadiusLimit": 50}, allow={"echo-b", "vault"}, deny=("vault",)
    ) as env:
        for body, status, rule in cases:
            experiment_id = await env.create(body)
            answer = await env.client.post(f"/experiments/{experiment_id}/start", headers=env.operator)
            assert answer.status_code == status, answer.text
            error = answer.json()["error"]
            assert error["details"]["rule"] == rule and f"safety rule {rule}" in error["message"]
        await _steady_state_refusal(env, latency_experiment(target=one))
        starts = [entry for entry in env.audit("/experiments/") if entry.path.endswith("/start")]
        assert len(starts) == len(cases) + 1 and {entry.result for entry in starts} == {"failed"}
        assert {entry.status_code for entry in starts} == {422}
        assert all("refused by safety rule" in entry.message for entry in starts)
        assert len(await fleet.faults()) == before


async def _steady_state_refusal(env: ChaosEnv, body: dict[str, Any]) -> None:
    """A hypothesis that does not hold: the probe's URL refuses connections."""
    closed = f"http://127.0.0.1:{free_port()}/health"
    experiment_id = await env.create({**body, **http_probe(closed, name="down")})
    answer = await env.client.post(f"/experiments/{experiment_id}/start", headers=env.operator)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["details"]["rule"] == "steadyState"
    assert "down: ConnectError" in answer.json()["error"]["message"]
    detail = await env.detail(experiment_id)
    assert [(probe["phase"], probe["ok"]) for probe in detail["probes"]] == [("before", False)]
    assert detail["experiment"]["status"] == "created"


async def test_a_second_experiment_on_a_busy_service_is_refused_until_the_first_is_stopped(env: ChaosEnv) -> None:
    first = await env.start(latency_experiment(latency_ms=50))
    await env.injected()
    second = await env.create(latency_experiment(latency_ms=80))
    busy = await env.client.post(f"/experiments/{second}/start", headers=env.operator)
    assert busy.status_code == 409, busy.text
    assert busy.json()["error"]["details"] == {"rule": "oneExperimentPerService", "experiment": first}
    adhoc = {"target": {"service": "echo"}, "faultType": "cpu_stress", "duration": "5s"}
    assert (await env.client.post("/faults/inject", json=adhoc, headers=env.operator)).status_code == 409
    again = await env.client.post(f"/experiments/{first}/start", headers=env.operator)
    assert again.status_code == 409 and "is running" in again.json()["error"]["message"]
    stopped = await env.client.post(f"/experiments/{first}/stop", headers=env.operator)
    assert stopped.status_code == 200 and stopped.json()["status"] == "aborted"
    assert stopped.json()["reason"] == "stopped by service:tester-operate"
    assert await env.active_faults() == []
    not_running = await env.client.post(f"/experiments/{first}/stop", headers=env.operator)
    assert not_running.status_code == 409
    assert (await env.client.post(f"/experiments/{second}/start", headers=env.operator)).status_code == 202
    await env.injected()
    await env.client.post(f"/experiments/{second}/stop", headers=env.operator)
    assert await env.active_faults() == []


async def test_a_failing_probe_aborts_and_rolls_back(env: ChaosEnv) -> None:
    body = latency_experiment(latency_ms=600, **http_probe(env.url("/echo"), name="fast", maxLatencyMs=300))
    experiment_id = await env.start(body)
    detail = await env.finished(experiment_id)
    experiment = detail["experiment"]
    assert experiment["status"] == "aborted", experiment
    assert experiment["reason"].startswith("the steady state failed 2 rounds in a row: fast:")
    [injection] = detail["injections"]
    assert injection["state"] == "reverted" and injection["targetState"] == "reverted"
    assert injection["requestedAt"] <= injection["injectedAt"] <= injection["revertedAt"]
    phases = [(probe["phase"], probe["ok"]) for probe in detail["probes"]]
    assert phases == [("before", True), ("during", False), ("during", False), ("after", True)]
    assert detail["resilience"] == {"experiment": pytest.approx(33.33), "service": pytest.approx(33.33)}
    assert await env.active_faults() == []
    kinds = [entry["kind"] for entry in detail["journal"]]
    assert kinds.index("injecting") < kinds.index("active") < kinds.index("reverted")
    dashboard = (await env.client.get("/dashboard", headers={"Accept": "application/json"})).json()
    [shown] = dashboard["experiments"]
    assert shown["status"] == "aborted" and [point[1] for point in shown["fault"]] == [1, 0]
    assert [point[1] for point in shown["probes"][0]["points"]] == [1, 0, 0, 1]
    assert dashboard["services"] == [{"name": "echo", "score": pytest.approx(33.33), "finished": 1}]
    page = await env.client.get("/dashboard")
    assert page.status_code == 200 and "tmsopsChart" in page.text and experiment_id in page.text


async def test_verdicts_completed_and_deviated_and_rollback_even_without_auto_rollback(
    tmp_path: Path, fleet: Fleet
) -> None:
    async with chaos_on(tmp_path, fleet, safety={"autoRollback": False}) as env:
        calm = latency_experiment(latency_ms=20, duration="1s", **http_probe(env.url("/echo"), maxLatencyMs=5000))
        completed = await env.finished(await env.start(calm))
        assert completed["experiment"]["status"] == "completed" and completed["experiment"]["score"] == 100
        harsh = latency_experiment(latency_ms=600, duration="1.5s", **http_probe(env.url("/echo"), maxLatencyMs=300))
        deviated = await env.finished(await env.start(harsh))
        assert deviated["experiment"]["status"] == "deviated", deviated["experiment"]
        assert "probe rounds failed during the fault" in deviated["experiment"]["reason"]
        assert [item["state"] for item in deviated["injections"]] == ["reverted"]
        assert await env.active_faults() == []
        listing = await env.client.get("/experiments", params={"status": "deviated"})
        assert [item["id"] for item in listing.json()] == [deviated["experiment"]["id"]]
        both = await env.client.get("/experiments", params={"service": "echo", "limit": 5})
        assert len(both.json()) == 2
        metrics = (await env.client.get("/metrics")).text
        assert 'tmsops_chaos_experiments{status="completed"} 1.0' in metrics
        assert 'tmsops_chaos_experiments{status="deviated"} 1.0' in metrics
        assert "tmsops_chaos_open_injections 0.0" in metrics


async def test_an_ad_hoc_fault_ends_at_its_time_limit(env: ChaosEnv) -> None:
    body = {"target": {"service": "echo", "mode": "all"}, "faultType": "service_unavailable", "duration": "1s"}
    answer = await env.client.post("/faults/inject", json=body, headers=env.operator)
    assert answer.status_code == 202 and answer.json()["kind"] == "adhoc"
    detail = await env.finished(answer.json()["id"])
    assert detail["experiment"]["status"] == "completed"
    [injection] = detail["injections"]
    assert injection["request"]["ttlS"] == 2.0 and injection["targetState"] == "reverted"
    assert await env.active_faults() == []


async def test_the_emergency_stop_reverts_everything_and_refuses_until_an_admin_rearms(
    tmp_path: Path, fleet: Fleet
) -> None:
    async with chaos_on(tmp_path, fleet) as env:
        running = await env.start(latency_experiment(latency_ms=50))
        adhoc = {"target": {"service": "echo-b"}, "faultType": "cpu_stress", "parameters": {"loadPercent": 20}}
        injected = await env.client.post("/faults/inject", json={**adhoc, "duration": "30s"}, headers=env.operator)
        assert injected.status_code == 202
        await env.injected("echo")
        await env.injected("echo-b")
        stop = await env.client.post("/safety/emergency-stop", json={"reason": "pager"}, headers=env.operator)
        assert stop.status_code == 200, stop.text
        assert stop.json()["confirmed"] is True and stop.json()["openInjections"] == []
        assert await env.active_faults() == []
        for experiment_id in (running, injected.json()["id"]):
            detail = await env.finished(experiment_id)
            assert detail["experiment"]["status"] == "aborted"
            assert detail["experiment"]["reason"] == "emergency stop by service:tester-operate: pager"
        status = (await env.client.get("/safety/status")).json()
        assert status["emergencyStop"]["engaged"] and status["emergencyStop"]["reason"] == "pager"
        refused = await env.client.post("/faults/inject", json={**adhoc, "duration": "5s"}, headers=env.operator)
        assert refused.status_code == 409 and refused.json()["error"]["details"]["rule"] == "emergencyStop"
        assert (await env.client.post("/safety/rearm", headers=env.operator)).status_code == 403
        rearmed = await env.client.post("/safety/rearm", headers=env.admin)
        assert rearmed.status_code == 200 and rearmed.json()["emergencyStop"]["engaged"] is False
        again = await env.client.post("/faults/inject", json={**adhoc, "duration": "1s"}, headers=env.operator)
        assert again.status_code == 202
        await env.finished(again.json()["id"])
        audited = [(entry.path, entry.status_code) for entry in env.audit("/safety/")]
        assert ("/safety/emergency-stop", 200) in audited and ("/safety/rearm", 403) in audited


async def test_read_routes_health_metrics_and_fault_types(env: ChaosEnv) -> None:
    types = (await env.client.get("/faults/types")).json()
    assert [item["name"] for item in types] == [
        "network_latency",
        "service_unavailable",
        "cpu_stress",
        "memory_leak",
        "disk_full",
        "database_slow",
    ]
    assert all(item["parameters"]["type"] == "object" for item in types)
    health = (await env.client.get("/health")).json()
    checks = {check["name"]: check["ok"] for check in health["checks"]}
    assert checks["crash recovery"] and checks["target reachable"] and health["status"] == "degraded"
    metrics = (await env.client.get("/metrics")).text
    assert "tmsops_chaos_open_injections 0.0" in metrics
    assert "tmsops_chaos_emergency_stop_engaged 0.0" in metrics
    status = (await env.client.get("/safety/status")).json()
    assert status["limits"]["maxExperimentDuration"] == 1800 and status["openInjections"] == []
    assert (await env.client.get("/experiments")).json() == []
    docs = (await env.client.get("/openapi.json")).json()
    assert "application/yaml" in docs["paths"]["/experiments"]["post"]["requestBody"]["content"]


# The Prometheus API and the model server, faked at their HTTP boundary.


class FakeObservability(BaseHTTPRequestHandler):
    """``/api/v1/query`` answers ``QUEUE``; ``/api/v1/query_range`` a flat series ending in a spike;
    ``/detect`` flags every point above 100."""

    QUEUE = 42.5

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/api/v1/query":
            result = [{"metric": {}, "value": [time.time(), str(self.QUEUE)]}]
            self._json({"status": "success", "data": {"resultType": "vector", "result": result}})
        elif url.path == "/api/v1/query_range":
            start, step = float(query["start"][0]), float(query["step"][0])
            values = [[start + step * index, "10"] for index in range(30)] + [[start + step * 30, "500"]]
            data = {"resultType": "matrix", "result": [{"metric": {}, "values": values}]}
            self._json({"status": "success", "data": data})
        else:
            self._json({"error": "not found"}, 404)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        results = []
        for series in body["series"]:
            scores = [value / 100 for value in series["values"]]
            anomalies = [index for index, score in enumerate(scores) if score > 1]
            results.append(
                {
                    "id": series["id"],
                    "scores": scores,
                    "anomalies": anomalies,
                    "threshold": 1.0,
                    "model": "fake",
                    "version": "1",
                }
            )
        self._json(results)

    def _json(self, body: Any, status: int = 200) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def observability() -> Iterator[str]:
    with threaded_http(FakeObservability) as url:
        yield url


async def test_prometheus_and_anomaly_probes_gate_the_start(tmp_path: Path, fleet: Fleet, observability: str) -> None:
    settings = {"prometheus_url": observability, "model_server_url": observability}
    async with chaos_on(tmp_path, fleet, settings=settings) as env:
        holds = {"type": "prometheus", "name": "queue", "query": "queue_depth", "expected": 42, "tolerance": 1}
        plan = await _dry_run(env, holds)
        assert plan.status_code == 200, plan.text
        assert plan.json()["steadyState"][0]["detail"] == "42.5 is within 42 ± 1 (1 samples)"
        off = await _dry_run(env, {**holds, "expected": 10})
        assert off.status_code == 422 and "queue: 42.5 is outside 10 ± 1" in off.json()["error"]["message"]
        spike = {"type": "anomaly", "name": "demand", "service": "echo", "window": "10m", "step": "15s"}
        flagged = await _dry_run(env, spike)
        assert flagged.status_code == 422, flagged.text
        assert "demand: 1 of the last 3 points flagged by the detector" in flagged.json()["error"]["message"]
        quiet = await _dry_run(env, {**spike, "lastPoints": 1, "minPoints": 40, "window": "10m"})
        assert quiet.status_code == 422 and "only 31 points" in quiet.json()["error"]["message"]


async def _dry_run(env: ChaosEnv, probe: dict[str, Any]) -> Any:
    experiment_id = await env.create(latency_experiment(steadyState={"probes": [probe]}))
    return await env.client.post(f"/experiments/{experiment_id}/start", json={"dryRun": True}, headers=env.operator)


async def test_concurrent_starts_on_one_service_admit_exactly_one(env: ChaosEnv) -> None:
    ids = [await env.create(latency_experiment(latency_ms=20)) for _ in range(3)]
    answers = await asyncio.gather(
        *(env.client.post(f"/experiments/{item}/start", headers=env.operator) for item in ids)
    )
    assert sorted(answer.status_code for answer in answers) == [202, 409, 409]
    [started] = [item for item, answer in zip(ids, answers, strict=True) if answer.status_code == 202]
    await env.injected()
    await env.client.post(f"/experiments/{started}/stop", headers=env.operator)
    await wait_for(lambda: _none_active(env), 10, "no fault in effect")


async def _none_active(env: ChaosEnv) -> bool | None:
    return True if not await env.active_faults() else None
