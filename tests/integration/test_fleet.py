"""The local fleet with real replica processes (tmsops.fleet.echo) behind its real proxy."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest
from support.net import free_port

from tmsops.fleet.fault_worker import FILL_PREFIX
from tmsops.fleet.proxy import MAX_BODY_BYTES
from tmsops.fleet.supervisor import Fleet
from tmsops.settings import FleetConfig, FleetService, SettingsError
from tmsops.targets.base import (
    PortInUse,
    ReplicasOutOfRange,
    StartFailed,
    UnknownFault,
    UnknownService,
    UnsupportedFault,
)
from tmsops.targets.model import FaultRequest, FaultState, Resources

pytestmark = [pytest.mark.anyio, pytest.mark.xdist_group("fleet")]
ECHO = ["{python}", "-m", "tmsops.fleet.echo"]


def echo_service(**overrides: object) -> FleetService:
    fields: dict[str, object] = {"command": ECHO, "port": free_port(), "max_replicas": 4, "stop_grace": 5}
    return FleetService.model_validate({**fields, **overrides})


def fleet_of(tmp_path: Path, **services: FleetService) -> Fleet:
    config = FleetConfig(control_port=free_port(), services=services, usage_interval=0.5, restart_backoff_max=2)
    return Fleet(config, state_dir=tmp_path)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    data_dir = tmp_path / "echo-data"
    fleet = fleet_of(tmp_path, echo=echo_service(data_dir=data_dir, dependencies={"store": f"127.0.0.1:{free_port()}"}))
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


def url(fleet: Fleet, path: str, service: str = "echo") -> str:
    return f"http://127.0.0.1:{fleet.config.services[service].port}{path}"


def our_children() -> list[psutil.Process]:
    return [child for child in psutil.Process().children(recursive=True) if child.status() != psutil.STATUS_ZOMBIE]


async def timed_get(client: httpx.AsyncClient, address: str) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = await client.get(address)
    return response, time.perf_counter() - started


async def test_the_proxy_balances_over_ready_replicas(fleet: Fleet) -> None:
    status = await fleet.set_replicas("echo", 3)
    assert status.replicas == 3 and status.ready_replicas == 3
    async with httpx.AsyncClient() as client:
        answers = await asyncio.gather(*(client.get(url(fleet, "/echo?sleep_ms=50")) for _ in range(30)))
    assert {answer.status_code for answer in answers} == {200}
    assert {answer.json()["replica"] for answer in answers} == {pod.id for pod in status.pods}


async def test_scaling_outside_min_max_and_unknown_services_are_refused(fleet: Fleet) -> None:
    with pytest.raises(ReplicasOutOfRange, match=r"5 replicas is outside minReplicas 1 \.\. maxReplicas 4"):
        await fleet.set_replicas("echo", 5)
    with pytest.raises(UnknownService, match="unknown service 'nope'; known services: echo"):
        await fleet.service("nope")
    assert (await fleet.service("echo")).replicas == 1


async def test_a_dry_run_changes_nothing(fleet: Fleet) -> None:
    planned = await fleet.set_replicas("echo", 3, dry_run=True)
    assert planned.replicas == 3
    assert (await fleet.service("echo")).ready_replicas == 1
    resized = await fleet.set_resources("echo", Resources(memory_limit="300Mi"), dry_run=True)
    assert resized.resources.memory_limit == 300 * 2**20
    assert (await fleet.service("echo")).resources.memory_limit is None


async def test_a_command_that_fails_to_start_leaves_no_process(tmp_path: Path) -> None:
    before = {child.pid for child in our_children()}
    broken = echo_service(command=["{python}", "-c", "import sys; print('no database'); sys.exit(3)"])
    fleet = fleet_of(tmp_path, broken=broken)
    with pytest.raises(StartFailed, match=r"exited with code 3 before it was ready:\nno database"):
        await fleet.start()
    assert {child.pid for child in our_children()} <= before


async def test_a_port_in_use_is_a_temporary_error_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        fleet = fleet_of(tmp_path, echo=echo_service(port=taken.getsockname()[1]))
        with pytest.raises(PortInUse) as raised:
            await fleet.start()
    assert raised.value.retryable
    assert not [child for child in our_children() if "tmsops.fleet.echo" in " ".join(child.cmdline())]


async def test_a_crashed_replica_is_restarted(fleet: Fleet) -> None:
    pod = (await fleet.service("echo")).pods[0]
    os.kill(fleet._group("echo").replicas[pod.id].pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = await fleet.service("echo")
        if status.ready_replicas == 1 and status.pods[0].restarts == 1:
            break
        await asyncio.sleep(0.1)
    assert status.pods[0].id == pod.id and status.pods[0].restarts == 1
    async with httpx.AsyncClient() as client:
        assert (await client.get(url(fleet, "/echo"))).status_code == 200


async def test_injected_latency_is_added_then_reverted(fleet: Fleet) -> None:
    async with httpx.AsyncClient() as client:
        fault = await fleet.inject(
            FaultRequest(service="echo", fault={"type": "network_latency", "latency_ms": 200}, ttl_s=60)
        )
        _, slow = await timed_get(client, url(fleet, "/echo"))
        reverted = await fleet.revert(fault.id)
        _, fast = await timed_get(client, url(fleet, "/echo"))
    assert slow >= 0.2 > fast
    assert reverted is not None and reverted.state is FaultState.REVERTED
    assert (await fleet.revert(fault.id)).state is FaultState.REVERTED  # type: ignore[union-attr]


async def test_a_fault_ends_at_its_ttl_without_a_revert(fleet: Fleet) -> None:
    await fleet.inject(FaultRequest(service="echo", fault={"type": "service_unavailable"}, ttl_s=1))
    async with httpx.AsyncClient() as client:
        assert (await client.get(url(fleet, "/echo"))).status_code == 503
        await asyncio.sleep(1.1)
        assert (await client.get(url(fleet, "/echo"))).status_code == 200
    await asyncio.sleep(1.0)
    assert [fault.state for fault in await fleet.faults("echo")] == [FaultState.EXPIRED]


async def test_connection_reset_and_bandwidth_limit(fleet: Fleet) -> None:
    async with httpx.AsyncClient() as client:
        reset = await fleet.inject(FaultRequest(service="echo", fault={"type": "connection_reset"}, ttl_s=60))
        with pytest.raises(httpx.TransportError):
            await client.get(url(fleet, "/echo"))
        await fleet.revert(reset.id)
        await fleet.inject(FaultRequest(service="echo", fault={"type": "bandwidth_limit", "rate_kbps": 100}, ttl_s=60))
        response, elapsed = await timed_get(client, url(fleet, "/bytes?n=50000"))
    assert len(response.content) == 50000
    assert elapsed >= 0.45  # 50 kB at 100 kB/s


async def test_a_dry_run_fault_is_planned_and_has_no_effect(fleet: Fleet) -> None:
    planned = await fleet.inject(
        FaultRequest(service="echo", fault={"type": "service_unavailable"}, ttl_s=60, dry_run=True)
    )
    assert planned.state is FaultState.PLANNED
    async with httpx.AsyncClient() as client:
        assert (await client.get(url(fleet, "/echo"))).status_code == 200
    assert await fleet.faults("echo") == []


async def test_faults_the_service_cannot_take_are_refused(fleet: Fleet) -> None:
    with pytest.raises(UnsupportedFault, match="no dependency 'postgres' \\(declared: store\\)"):
        await fleet.inject(
            FaultRequest(
                service="echo", fault={"type": "slow_dependency", "dependency": "postgres", "latency_ms": 5}, ttl_s=5
            )
        )
    with pytest.raises(UnsupportedFault, match="no running replica echo-9"):
        await fleet.inject(FaultRequest(service="echo", fault={"type": "cpu_stress"}, ttl_s=5, replicas=["echo-9"]))
    with pytest.raises(UnknownFault):
        await fleet.revert("0000")


async def test_cpu_stress_shows_in_usage_and_its_workers_end(fleet: Fleet) -> None:
    await asyncio.sleep(1.0)
    idle = (await fleet.usage("echo")).cpu_cores
    fault = await fleet.inject(FaultRequest(service="echo", fault={"type": "cpu_stress", "load_percent": 80}, ttl_s=30))
    workers = [
        worker.pid for replica in fleet._group("echo").replicas.values() for worker in replica.fault_workers[fault.id]
    ]
    await asyncio.sleep(2.0)
    busy = (await fleet.usage("echo")).cpu_cores
    await fleet.revert(fault.id)
    assert busy > idle + 0.1  # an 80% worker on a replica that does nothing, on a machine that may be busy
    assert not [pid for pid in workers if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]


async def test_memory_growth_above_the_limit_kills_and_restarts_the_replica(fleet: Fleet) -> None:
    await fleet.set_resources("echo", Resources(memory_limit="150Mi"))
    await fleet.inject(
        FaultRequest(service="echo", fault={"type": "memory_growth", "rate_mb_per_s": 200, "cap_mb": 400}, ttl_s=30)
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (await fleet.service("echo")).pods[0].restarts == 0:
        await asyncio.sleep(0.2)
    assert (await fleet.service("echo")).pods[0].restarts == 1


async def test_disk_fill_keeps_the_floor_and_its_file_goes(fleet: Fleet, tmp_path: Path) -> None:
    data_dir = tmp_path / "echo-data"
    free_mb = psutil.disk_usage(str(data_dir)).free / 2**20
    floor_mb = max(0.0, free_mb - 20)  # at most ~20 MB written, whatever the disk
    fault = await fleet.inject(
        FaultRequest(service="echo", fault={"type": "disk_fill", "fill_percent": 100, "floor_mb": floor_mb}, ttl_s=30)
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not list(data_dir.glob(f"{FILL_PREFIX}*")):
        await asyncio.sleep(0.1)
    files = list(data_dir.glob(f"{FILL_PREFIX}*"))
    assert len(files) == 1 and 0 < files[0].stat().st_size <= 21 * 2**20
    await fleet.revert(fault.id)
    assert not list(data_dir.glob(f"{FILL_PREFIX}*"))


async def test_a_paused_replica_answers_again_after_the_revert(fleet: Fleet) -> None:
    fault = await fleet.inject(
        FaultRequest(service="echo", fault={"type": "service_unavailable", "mode": "pause"}, ttl_s=30)
    )
    process = psutil.Process(fleet._group("echo").replicas[fault.replicas[0]].pid)
    # SIGSTOP takes effect when the kernel next schedules the process: wait for the state, not a time.
    for _ in range(200):
        if process.status() == psutil.STATUS_STOPPED:
            break
        await asyncio.sleep(0.025)
    assert process.status() == psutil.STATUS_STOPPED
    await fleet.revert(fault.id)
    async with httpx.AsyncClient() as client:
        assert (await client.get(url(fleet, "/echo"))).status_code == 200


async def test_a_slow_dependency_delays_traffic_to_it(tmp_path: Path) -> None:
    async def echo_back(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(echo_back, "127.0.0.1", 0)
    address = f"127.0.0.1:{upstream.sockets[0].getsockname()[1]}"
    fleet = fleet_of(tmp_path, echo=echo_service(dependencies={"db": address}, env={"DB": "{dependency:db}"}))
    await fleet.start()
    try:
        proxy_port = int(fleet._dependencies[("echo", "db")].address.rsplit(":", 1)[1])
        fault = await fleet.inject(
            FaultRequest(
                service="echo", fault={"type": "slow_dependency", "dependency": "db", "latency_ms": 150}, ttl_s=30
            )
        )
        slow = await _round_trip(proxy_port)
        await fleet.revert(fault.id)
        fast = await _round_trip(proxy_port)
    finally:
        await fleet.stop()
        upstream.close()
    assert slow >= 0.15 > fast


async def _round_trip(port: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write(b"ping")
    await reader.readexactly(4)
    elapsed = time.perf_counter() - started
    writer.close()
    return elapsed


def test_a_placeholder_naming_nothing_is_refused(tmp_path: Path) -> None:
    service = echo_service(env={"DB": "{dependency:postgres}"})
    with pytest.raises(SettingsError, match=r"fleet.services.echo: \{dependency:postgres\} .* names nothing declared"):
        fleet_of(tmp_path, echo=service)


async def test_stopping_the_fleet_leaves_no_process(tmp_path: Path) -> None:
    before = {child.pid for child in our_children()}
    fleet = fleet_of(tmp_path, echo=echo_service(replicas=2))
    await fleet.start()
    await fleet.inject(FaultRequest(service="echo", fault={"type": "cpu_stress", "load_percent": 10}, ttl_s=60))
    assert len({child.pid for child in our_children()} - before) >= 4
    await fleet.stop()
    assert {child.pid for child in our_children()} <= before


async def test_the_proxy_answers_bad_requests_itself(fleet: Fleet) -> None:
    port = fleet.config.services["echo"].port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"NOT A REQUEST\r\n\r\n")
    status_line = await reader.readline()
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 400")
    async with httpx.AsyncClient() as client:
        too_big = await client.post(url(fleet, "/echo"), content=b"x" * (MAX_BODY_BYTES + 1))
        head = await client.head(url(fleet, "/bytes?n=1234"))
    assert too_big.status_code == 413
    assert (head.status_code, head.headers["content-length"]) == (200, "1234")
