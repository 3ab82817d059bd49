"""Nothing is left behind: ``kill -9`` of the chaos service (a real ``python -m chaos`` process acting on the
fleet's control API over HTTP), then a restart, reverts every fault; without a restart the fleet ends them at
their time-to-live; an injection journaled without a fault id is found on the target and reverted."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support.chaos_env import (
    Gate,
    chaos_on,
    echo_service,
    free_port,
    latency_experiment,
    serve,
    tcp_echo,
    wait_for,
)

from chaos.journal import Journal, Status
from tmsops.auth import TokenStore, service_token
from tmsops.fleet.api import build_app as fleet_app
from tmsops.fleet.supervisor import Fleet
from tmsops.settings import FleetConfig, FleetSettings
from tmsops.state import make_engine
from tmsops.targets.fleet import FleetTarget
from tmsops.targets.model import Fault, FaultRequest, FaultState, NetworkLatency

pytestmark = [pytest.mark.anyio, pytest.mark.xdist_group("chaos")]
START_LINE = "tmsops chaos: http://"
RECOVERY_DEADLINE_S = 5.0


@dataclass
class FleetProcessless:
    """The fleet's control API served in the test's event loop, as ``tmsops fleet run`` serves it."""

    fleet: Fleet
    url: str

    async def active(self) -> list[Fault]:
        return [fault for fault in await self.fleet.faults("echo") if fault.state is FaultState.ACTIVE]


@pytest.fixture
async def fleet_api(tmp_path: Path) -> AsyncIterator[FleetProcessless]:
    async with tcp_echo() as database:
        config = FleetConfig(
            control_port=free_port(), services={"echo": echo_service(tmp_path, "echo", database, 1)}, usage_interval=0.5
        )
        app = fleet_app(FleetSettings(state_dir=tmp_path, fleet=config))
        server, task = await serve(app, config.control_port)
        try:
            yield FleetProcessless(app.state.fleet, f"http://127.0.0.1:{config.control_port}")
        finally:
            server.should_exit = True
            await task


class ChaosProcess:
    """``python -m chaos`` with a settings file; ``started_at`` is when it printed its start line."""

    def __init__(self, tmp_path: Path, fleet_url: str) -> None:
        self.port = free_port()
        self.config = tmp_path / "chaos.yaml"
        self.log = tmp_path / "chaos.log"
        settings = {
            "stateDir": str(tmp_path),
            "modelServerUrl": f"http://127.0.0.1:{free_port()}",
            "prometheusUrl": f"http://127.0.0.1:{free_port()}",
            "ports": {"chaos": self.port},
            "target": {"fleet": {"url": fleet_url}},
            "safety": {"blastRadiusLimit": 100},
        }
        self.config.write_text(yaml.safe_dump(settings))
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        env = {**os.environ, "TMSOPS_CONFIG": str(self.config)}
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "chaos", env=env, stdout=asyncio.subprocess.PIPE, stderr=log
            )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        self.started_at = time.monotonic()
        assert line.decode().startswith(START_LINE), f"{line!r}\n{self.log.read_text()[-2000:]}"
        await wait_for(self._answers, 60, "the chaos service to answer")

    async def _answers(self) -> bool | None:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                await client.get(f"{self.url}/health")
        except httpx.TransportError:
            return None
        return True

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 20)
            if self.process.returncode is None:
                await self.kill()


@pytest.fixture
async def chaos_process(tmp_path: Path, fleet_api: FleetProcessless) -> AsyncIterator[ChaosProcess]:
    process = ChaosProcess(tmp_path, fleet_api.url)
    try:
        yield process
    finally:
        await process.stop()


def token(tmp_path: Path, name: str = "tester") -> str:
    engine = make_engine(f"sqlite:///{tmp_path / 'tmsops.db'}")
    try:
        return service_token(TokenStore(engine), name)
    finally:
        engine.dispose()


def operator(tmp_path: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(tmp_path)}"}


async def start_experiment(process: ChaosProcess, headers: dict[str, str], duration: str) -> str:
    async with httpx.AsyncClient(base_url=process.url, headers=headers, timeout=30) as client:
        created = await client.post("/experiments", json=latency_experiment(200, duration=duration))
        assert created.status_code == 201, created.text
        started = await client.post(f"/experiments/{created.json()['id']}/start")
        assert started.status_code == 202, started.text
        return str(created.json()["id"])


async def test_after_kill_9_a_restart_reverts_every_fault_within_5_s_and_without_one_the_ttl_ends_it(
    tmp_path: Path, fleet_api: FleetProcessless, chaos_process: ChaosProcess
) -> None:
    await chaos_process.start()
    experiment_id = await start_experiment(chaos_process, operator(tmp_path), "60s")
    [fault] = await wait_for(lambda: _some(fleet_api), 15, "the fault in effect")
    await chaos_process.kill()
    assert [item.id for item in await fleet_api.active()] == [fault.id]

    await chaos_process.start()
    await wait_for(lambda: _none(fleet_api), RECOVERY_DEADLINE_S, "every fault to be reverted after the restart")
    assert time.monotonic() - chaos_process.started_at <= RECOVERY_DEADLINE_S
    assert fleet_api.fleet.book.get(fault.id).state is FaultState.REVERTED
    async with httpx.AsyncClient(base_url=chaos_process.url, timeout=30) as client:
        detail = await wait_for(lambda: _ended(client, experiment_id), 15, "the experiment to be marked aborted")
    assert detail["experiment"]["status"] == "aborted"
    assert "restarted in the middle of the run" in detail["experiment"]["reason"]
    assert [(item["faultId"], item["targetState"]) for item in detail["injections"]] == [(fault.id, "reverted")]

    await start_experiment(chaos_process, operator(tmp_path), "2s")
    [short] = await wait_for(lambda: _some(fleet_api), 15, "the second fault in effect")
    await chaos_process.kill()
    assert (short.expires_at - short.injected_at).total_seconds() == pytest.approx(3.0)  # 2 s + a 1 s margin
    ttl_left = (short.expires_at - datetime.now(UTC)).total_seconds()
    await wait_for(lambda: _none(fleet_api), ttl_left + 5, "the fault to end at its time-to-live")
    assert fleet_api.fleet.book.get(short.id).state is FaultState.EXPIRED


async def test_an_injection_without_a_fault_id_is_found_on_the_target_and_reverted(
    tmp_path: Path, fleet_api: FleetProcessless
) -> None:
    fleet = fleet_api.fleet
    journal = Journal(make_engine(f"sqlite:///{tmp_path / 'tmsops.db'}"))
    spec = {**latency_experiment(200), "target": {"service": "echo", "mode": "all", "value": None}}
    record = journal.create(spec, kind="experiment", created_by=None)
    journal.move(record.id, Status.RUNNING)
    request = FaultRequest(service="echo", fault=NetworkLatency(latency_ms=200), ttl_s=60, replicas=["echo-1"])
    journal.injecting(record.id, request)  # the process died before the target's answer was written
    lost = await fleet.inject(request)
    unrelated = await fleet.inject(request.model_copy(update={"fault": NetworkLatency(latency_ms=77)}))
    async with chaos_on(tmp_path, fleet) as env:
        await wait_for(lambda: _gone(fleet, lost.id), RECOVERY_DEADLINE_S, "the lost fault to be reverted")
        detail = await wait_for(lambda: _ended(env.client, record.id), 15, "the experiment to be marked aborted")
    assert detail["experiment"]["status"] == "aborted"
    assert [(item["faultId"], item["state"]) for item in detail["injections"]] == [(lost.id, "reverted")]
    assert [fault.id for fault in await fleet_api.active()] == [unrelated.id]
    await fleet.revert(unrelated.id)


async def test_a_rollback_is_retried_until_the_target_confirms(tmp_path: Path, fleet_api: FleetProcessless) -> None:
    gate = Gate(fleet_api.url.removeprefix("http://"))
    await gate.open()
    target = FleetTarget(gate.url, token(tmp_path, "chaos-under-test"), timeout_s=5)
    try:
        async with chaos_on(tmp_path, target) as env:
            experiment_id = await env.start(latency_experiment(200))
            await wait_for(lambda: _journaled(env.runner.journal, experiment_id), 15, "the injection journaled")
            [fault] = await fleet_api.active()
            await gate.close()  # the fleet's control API cannot be reached any more
            stopping = asyncio.create_task(env.client.post(f"/experiments/{experiment_id}/stop", headers=env.operator))
            await wait_for(lambda: _attempts(env.runner.journal, experiment_id, 3), 15, "failed rollback attempts")
            assert [item.id for item in await fleet_api.active()] == [fault.id]
            await gate.open()
            stopped = await stopping
            [injection] = env.runner.journal.injections(experiment_id)
    finally:
        await target.aclose()
        await gate.close()
    assert stopped.status_code == 200 and stopped.json()["status"] == "aborted", stopped.json()["reason"]
    assert injection.state == "reverted" and injection.target_state == "reverted" and injection.revert_attempts >= 3
    assert injection.error is not None and "cannot be reached" in injection.error
    assert await fleet_api.active() == []


async def _journaled(journal: Journal, experiment_id: str) -> bool | None:
    injections = journal.injections(experiment_id)
    return True if injections and injections[0].state == "active" else None


async def _attempts(journal: Journal, experiment_id: str, at_least: int) -> bool | None:
    [injection] = journal.injections(experiment_id)
    return True if injection.revert_attempts >= at_least else None


async def _some(fleet: FleetProcessless) -> list[Fault] | None:
    return await fleet.active() or None


async def _none(fleet: FleetProcessless) -> bool | None:
    return None if await fleet.active() else True


async def _gone(fleet: Fleet, fault_id: str) -> bool | None:
    return True if fleet.book.get(fault_id).state is not FaultState.ACTIVE else None


async def _ended(client: httpx.AsyncClient, experiment_id: str) -> dict[str, Any] | None:
    return _final((await client.get(f"/experiments/{experiment_id}")).json())


def _final(detail: dict[str, Any]) -> dict[str, Any] | None:
    return detail if detail["experiment"]["status"] in ("aborted", "completed", "deviated", "failed") else None
