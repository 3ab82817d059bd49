"""Shared set-up of the chaos service's integration tests (no tests here).

A real in-process :class:`Fleet` of echo replicas (with a data directory and a ``postgres``
dependency that is a small TCP echo server), and the chaos service served by uvicorn on a
free port, acting on that fleet. Tokens of each scope are issued in the shared state store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from fastapi import FastAPI

from chaos.runner import Runner
from chaos.service import build_app
from support.net import free_port
from tmsops.audit import AuditEntry, AuditQuery
from tmsops.auth import Scope, service_token
from tmsops.fleet.supervisor import Fleet
from tmsops.settings import ChaosSettings, FleetConfig, FleetService
from tmsops.targets.base import Target
from tmsops.targets.model import Fault, FaultState

ECHO = ["{python}", "-m", "tmsops.fleet.echo"]
FINAL = ("completed", "deviated", "aborted", "failed")
T = TypeVar("T")


@asynccontextmanager
async def tcp_echo() -> AsyncIterator[str]:
    """A TCP server that sends back what it reads: the "database" behind a dependency proxy."""

    async def echo_back(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo_back, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


class Gate:
    """A TCP forwarder to ``upstream`` (host:port) that can refuse every connection for a while."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def close(self) -> None:
        """Refuse new connections and cut the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)
        self._writers.difference_update((writer, up_writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


def echo_service(tmp_path: Path, name: str, database: str, replicas: int) -> FleetService:
    return FleetService(
        command=ECHO,
        port=free_port(),
        replicas=replicas,
        max_replicas=4,
        data_dir=tmp_path / f"{name}-data",
        dependencies={"postgres": database},
        env={"DATABASE": "{dependency:postgres}"},
        stop_grace=5,
    )


async def serve(app: FastAPI, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    return server, task


@dataclass
class ChaosEnv:
    app: FastAPI
    client: httpx.AsyncClient
    target: Target
    tmp_path: Path
    operator: dict[str, str]
    admin: dict[str, str]
    reader: dict[str, str]

    @property
    def fleet(self) -> Fleet:
        assert isinstance(self.target, Fleet)
        return self.target

    @property
    def runner(self) -> Runner:
        runner: Runner = self.app.state.runner
        return runner

    def url(self, path: str, service: str = "echo") -> str:
        return f"http://127.0.0.1:{self.fleet.config.services[service].port}{path}"

    def dependency_port(self, service: str = "echo") -> int:
        return int(self.fleet._dependencies[(service, "postgres")].address.rsplit(":", 1)[1])

    async def active_faults(self, service: str | None = None) -> list[Fault]:
        return [fault for fault in await self.target.faults(service) if fault.state is FaultState.ACTIVE]

    async def create(self, body: dict[str, Any]) -> str:
        answer = await self.client.post("/experiments", json=body, headers=self.operator)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])

    async def start(self, body: dict[str, Any]) -> str:
        experiment_id = await self.create(body)
        answer = await self.client.post(f"/experiments/{experiment_id}/start", headers=self.operator)
        assert answer.status_code == 202, answer.text
        return experiment_id

    async def detail(self, experiment_id: str) -> dict[str, Any]:
        answer = await self.client.get(f"/experiments/{experiment_id}")
        assert answer.status_code == 200, answer.text
        detail: dict[str, Any] = answer.json()
        return detail

    async def finished(self, experiment_id: str, deadline_s: float = 30) -> dict[str, Any]:
        async def final() -> dict[str, Any] | None:
            detail = await self.detail(experiment_id)
            return detail if detail["experiment"]["status"] in FINAL else None

        return await wait_for(final, deadline_s, f"experiment {experiment_id} to end")

    async def injected(self, service: str = "echo", deadline_s: float = 15) -> list[Fault]:
        async def active() -> list[Fault] | None:
            return await self.active_faults(service) or None

        return await wait_for(active, deadline_s, f"a fault in effect on {service}")

    def audit(self, path_prefix: str) -> list[AuditEntry]:
        entries: list[AuditEntry] = self.app.state.audit_log.query(AuditQuery(path_prefix=path_prefix))
        return entries


async def wait_for(check: Callable[[], Awaitable[T | None]], deadline_s: float, what: str) -> T:
    """Poll ``check`` until it answers something other than None; fail after ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = await check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {deadline_s} s for {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def chaos_env(
    tmp_path: Path,
    *,
    services: tuple[str, ...] = ("echo",),
    replicas: int = 1,
    safety: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    allow: set[str] | None = None,
    deny: tuple[str, ...] = (),
) -> AsyncIterator[ChaosEnv]:
    """The chaos service (see :func:`chaos_on`) on a fleet of echo services."""
    async with tcp_echo() as database:
        config = FleetConfig(
            control_port=free_port(),
            services={name: echo_service(tmp_path, name, database, replicas) for name in services},
            usage_interval=0.5,
            restart_backoff_max=2,
        )
        fleet = Fleet(config, state_dir=tmp_path)
        await fleet.start()
        try:
            async with chaos_on(tmp_path, fleet, safety=safety, settings=settings, allow=allow, deny=deny) as env:
                yield env
        finally:
            await fleet.stop()


@asynccontextmanager
async def chaos_on(
    tmp_path: Path,
    target: Target,
    *,
    safety: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    allow: set[str] | None = None,
    deny: tuple[str, ...] = (),
) -> AsyncIterator[ChaosEnv]:
    """The chaos service acting on ``target``; the blast radius limit is 100 % unless ``safety`` says."""
    options = {"model_server_url": f"http://127.0.0.1:{free_port()}", **(settings or {})}
    chaos_settings = ChaosSettings(state_dir=tmp_path, safety={"blastRadiusLimit": 100, **(safety or {})}, **options)
    app = build_app(chaos_settings, target=target, allow=allow, deny=deny)
    port = free_port()
    server, task = await serve(app, port)
    tokens = app.state.tokens
    headers = {
        scope: {"Authorization": f"Bearer {service_token(tokens, f'tester-{scope.value}', scope)}"} for scope in Scope
    }
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield ChaosEnv(
                app, client, target, tmp_path, headers[Scope.OPERATE], headers[Scope.ADMIN], headers[Scope.READ]
            )
    finally:
        server.should_exit = True
        await task


def latency_experiment(latency_ms: float = 300, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "echo latency",
        "target": {"service": "echo", "mode": "all"},
        "faultType": "network_latency",
        "parameters": {"latencyMs": latency_ms},
        "duration": "30s",
        "probeInterval": "0.2s",
        "failureThreshold": 2,
    }
    return {**body, **overrides}


def http_probe(url: str, **fields: Any) -> dict[str, Any]:
    return {"steadyState": {"probes": [{"type": "http", "url": url, **fields}]}}
