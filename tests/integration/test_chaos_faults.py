"""Each of the six fault types, injected through the chaos service, measurably degrades its target on the
real fleet, and after the rollback the target is measured back at its baseline; plus the demo workload,
where a failing probe on the gateway aborts a latency experiment on a service behind it."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from support.chaos_env import ChaosEnv, chaos_env, chaos_on, free_port, http_probe, wait_for

from tmsops.fleet.fault_worker import FILL_PREFIX
from tmsops.fleet.supervisor import Fleet
from tmsops.settings import FleetConfig, demo_fleet

pytestmark = [pytest.mark.anyio, pytest.mark.xdist_group("chaos")]
MB = 2**20


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ChaosEnv]:
    """One echo replica with a data directory and a database dependency, shared by the fault tests."""
    async with chaos_env(tmp_path_factory.mktemp("chaos-faults")) as running:
        yield running


def experiment(fault_type: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": f"{fault_type} on echo",
        "target": {"service": "echo", "mode": "all"},
        "faultType": fault_type,
        "parameters": parameters,
        "duration": "60s",
    }


async def run_then_stop(env: ChaosEnv, fault_type: str, parameters: dict[str, Any]) -> str:
    experiment_id = await env.start(experiment(fault_type, parameters))
    await env.injected()
    return experiment_id


async def stop(env: ChaosEnv, experiment_id: str) -> None:
    answer = await env.client.post(f"/experiments/{experiment_id}/stop", headers=env.operator)
    assert answer.status_code == 200 and answer.json()["status"] == "aborted", answer.text
    detail = await env.detail(experiment_id)
    assert [item["targetState"] for item in detail["injections"]] == ["reverted"]
    assert await env.active_faults() == []


async def timed_get(client: httpx.AsyncClient, url: str) -> tuple[int, float]:
    started = time.perf_counter()
    response = await client.get(url)
    return response.status_code, time.perf_counter() - started


async def median_latency(client: httpx.AsyncClient, url: str, count: int = 5) -> float:
    return statistics.median([(await timed_get(client, url))[1] for _ in range(count)])


async def test_network_latency_is_seen_by_a_client_and_goes_away(env: ChaosEnv) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        baseline = await median_latency(client, env.url("/echo"))
        experiment_id = await run_then_stop(env, "network_latency", {"latencyMs": 400})
        slow = await median_latency(client, env.url("/echo"))
        await stop(env, experiment_id)
        after = await median_latency(client, env.url("/echo"))
    assert slow >= 0.4 + baseline * 0.5
    assert after < 0.4 and slow - after >= 0.35


async def test_service_unavailable_answers_errors_then_recovers(env: ChaosEnv) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(env.url("/echo"))).status_code == 200
        experiment_id = await run_then_stop(env, "service_unavailable", {"mode": "error", "status": 503})
        during = [(await client.get(env.url("/echo"))).status_code for _ in range(5)]
        await stop(env, experiment_id)
        after = [(await client.get(env.url("/echo"))).status_code for _ in range(5)]
    assert during == [503] * 5 and after == [200] * 5


async def usage(env: ChaosEnv, attribute: str) -> float:
    return float(getattr(await env.fleet.usage("echo"), attribute))


async def settle(env: ChaosEnv, attribute: str, below: float, what: str) -> float:
    async def low() -> float | None:
        value = await usage(env, attribute)
        return value if value < below else None

    return await wait_for(low, 20, what)


async def climb(env: ChaosEnv, attribute: str, above: float, what: str) -> float:
    async def high() -> float | None:
        value = await usage(env, attribute)
        return value if value > above else None

    return await wait_for(high, 20, what)


async def test_cpu_stress_shows_in_the_fleets_usage_and_ends(env: ChaosEnv) -> None:
    baseline = await settle(env, "cpu_cores", 0.15, "an idle echo replica")
    experiment_id = await run_then_stop(env, "cpu_stress", {"workers": 1, "loadPercent": 90})
    busy = await climb(env, "cpu_cores", baseline + 0.25, "the CPU stress to show in usage")
    await stop(env, experiment_id)
    after = await settle(env, "cpu_cores", baseline + 0.1, "CPU back near its baseline")
    assert busy > after + 0.15


async def test_memory_leak_grows_resident_memory_and_releases_it(env: ChaosEnv) -> None:
    baseline = await usage(env, "memory_bytes")
    experiment_id = await run_then_stop(env, "memory_leak", {"rateMbPerS": 200, "capMb": 150})
    grown = await climb(env, "memory_bytes", baseline + 100 * MB, "memory to grow by 100 MB")
    await stop(env, experiment_id)
    after = await settle(env, "memory_bytes", baseline + 30 * MB, "memory back near its baseline")
    assert grown - after > 70 * MB


async def test_disk_full_fills_the_data_directory_above_the_floor_and_frees_it(env: ChaosEnv) -> None:
    data_dir = env.fleet.config.services["echo"].data_dir
    assert data_dir is not None
    baseline = psutil.disk_usage(str(data_dir)).free
    floor_mb = baseline / MB - 64  # about 64 MB written, whatever the disk
    experiment_id = await run_then_stop(env, "disk_full", {"fillPercent": 100, "floorMb": floor_mb})

    async def filled() -> int | None:
        free = psutil.disk_usage(str(data_dir)).free
        return free if free < baseline - 40 * MB else None

    during = await wait_for(filled, 20, "the data directory to fill")
    assert list(data_dir.glob(f"{FILL_PREFIX}*"))
    await stop(env, experiment_id)
    after = psutil.disk_usage(str(data_dir)).free
    assert not list(data_dir.glob(f"{FILL_PREFIX}*"))
    assert after > during + 40 * MB


async def round_trip(port: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write(b"SELECT 1")
    await reader.readexactly(8)
    elapsed = time.perf_counter() - started
    writer.close()
    return elapsed


async def test_database_slow_delays_queries_to_the_dependency_and_ends(env: ChaosEnv) -> None:
    port = env.dependency_port()
    baseline = statistics.median([await round_trip(port) for _ in range(3)])
    experiment_id = await run_then_stop(env, "database_slow", {"dependency": "postgres", "latencyMs": 300})
    slow = statistics.median([await round_trip(port) for _ in range(3)])
    await stop(env, experiment_id)
    after = statistics.median([await round_trip(port) for _ in range(3)])
    assert slow >= 0.3 + baseline * 0.5
    assert after < 0.3 and slow - after >= 0.25


# The demo workload: api-gateway -> tracking-service, with a load generator on the gateway.


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Fleet]:
    services = {
        name: service.model_copy(
            update={
                "port": free_port(),
                "data_dir": tmp_path / name if service.data_dir else None,
                "env": {**service.env, "SEED_ROWS": "200"},
            }
        )
        for name, service in demo_fleet().items()
    }
    fleet = Fleet(FleetConfig(control_port=free_port(), services=services, usage_interval=0.5), state_dir=tmp_path)
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


async def load(url: str, stop: asyncio.Event, latencies: list[tuple[float, float]]) -> None:
    """Requests through the gateway one after another, each latency recorded with its end time."""
    async with httpx.AsyncClient(timeout=10) as client:
        while not stop.is_set():
            status, elapsed = await timed_get(client, url)
            assert status == 200
            latencies.append((time.monotonic(), elapsed))
            await asyncio.sleep(0.02)


async def test_on_the_demo_workload_a_failing_gateway_probe_aborts_a_tracking_latency_experiment(
    demo: Fleet, tmp_path: Path
) -> None:
    gateway = f"http://127.0.0.1:{demo.config.services['api-gateway'].port}/api/shipments/7"
    body = {
        "name": "slow tracking",
        "target": {"service": "tracking-service", "mode": "all"},
        "faultType": "network_latency",
        "parameters": {"latencyMs": 500},
        "duration": "60s",
        "probeInterval": "0.3s",
        "failureThreshold": 2,
        **http_probe(gateway, name="gateway p100", maxLatencyMs=400),
    }
    latencies: list[tuple[float, float]] = []
    stop = asyncio.Event()
    async with chaos_on(tmp_path, demo) as env:
        traffic = asyncio.create_task(load(gateway, stop, latencies))
        await wait_for(lambda: _count(latencies, 5), 30, "baseline traffic")
        experiment_id = await env.start(body)
        detail = await env.finished(experiment_id)
        ended, wanted = time.monotonic(), len(latencies) + 5
        await wait_for(lambda: _count(latencies, wanted), 30, "traffic after the rollback")
        stop.set()
        await traffic
    assert detail["experiment"]["status"] == "aborted"
    assert detail["experiment"]["reason"].startswith("the steady state failed 2 rounds in a row: gateway p100")
    injected = detail["injections"][0]
    assert injected["targetState"] == "reverted"
    during = [elapsed for at, elapsed in latencies if elapsed >= 0.5]
    after = [elapsed for at, elapsed in latencies if at > ended]
    assert during, "the load generator saw no request slowed by the fault"
    assert statistics.median(after) < 0.5
    assert [probe["ok"] for probe in detail["probes"] if probe["phase"] == "after"] == [True]


async def _count(latencies: list[tuple[float, float]], at_least: int) -> bool | None:
    return True if len(latencies) >= at_least else None
