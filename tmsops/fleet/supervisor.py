"""The local fleet: every declared service's proxy, replicas, dependency proxies and faults.

:class:`Fleet` is the target backend of the local fleet, in process; the fleet's control
API serves it over HTTP to the other tmsops services. Start-up binds every proxy port
first (a port in use fails before any process starts), then starts the replicas; any
failure stops what was started. A monitor samples CPU and memory per replica, enforces
memory limits, and ends faults whose time is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

from tmsops.fleet import replica as replicas
from tmsops.fleet.dependency import DependencyProxy
from tmsops.fleet.fault_worker import FILL_PREFIX
from tmsops.fleet.faults import FaultBook, Undo, new_fault
from tmsops.fleet.metrics import FleetMetrics
from tmsops.fleet.proxy import EffectsFor, ServiceProxy
from tmsops.fleet.service_group import CommandFor, ServiceGroup
from tmsops.settings import FleetConfig, FleetService, SettingsError
from tmsops.targets.base import UnknownService, UnsupportedFault
from tmsops.targets.model import (
    CpuStress,
    DiskFill,
    Fault,
    FaultRequest,
    FaultState,
    MemoryGrowth,
    Resources,
    ServiceStatus,
    ServiceUnavailable,
    ServiceUsage,
    SlowDependency,
)

PLACEHOLDER = re.compile(r"\{([A-Za-z]+)(?::([a-z0-9-]+))?\}")
FILL_NAME = re.compile(re.escape(FILL_PREFIX) + r"(?P<fault>[0-9a-f]+)-(?P<expires>\d+)$")

log = logging.getLogger("tmsops.fleet")


class Fleet:
    kind = "fleet"

    def __init__(self, config: FleetConfig, *, state_dir: Path, host: str = "127.0.0.1") -> None:
        self.config = config
        self.host = host
        self.metrics = FleetMetrics()
        self.book = FaultBook()
        self._logs_dir = state_dir / "fleet" / "logs"
        self._client = httpx.AsyncClient()
        self._groups: dict[str, ServiceGroup] = {}
        self._dependencies: dict[tuple[str, str], DependencyProxy] = {}
        self._monitor: asyncio.Task[None] | None = None
        for name, spec in config.services.items():
            _check_placeholders(name, spec, config)

    async def start(self) -> None:
        """Bind every port, then start every service's replicas; on failure, stop all and raise."""
        try:
            await self._start_proxies()
            self._sweep_fill_files()
            await asyncio.gather(*(group.scale(group.spec.replicas) for group in self._groups.values()))
        except BaseException:
            await self.stop()
            raise
        self._monitor = asyncio.create_task(self._watch(), name="fleet monitor")

    async def stop(self) -> None:
        """Revert every fault, stop every replica (draining it first), close the proxies."""
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await self.book.revert_all()
        await asyncio.gather(*(group.close() for group in self._groups.values()))
        await asyncio.gather(*(group.proxy.stop() for group in self._groups.values()))
        await asyncio.gather(*(proxy.stop() for proxy in self._dependencies.values()))
        self._sweep_fill_files(everything=True)
        await self._client.aclose()

    async def aclose(self) -> None:
        await self.stop()

    # The target interface.

    async def list_services(self) -> list[ServiceStatus]:
        return [group.status() for group in self._groups.values()]

    async def service(self, name: str) -> ServiceStatus:
        return self._group(name).status()

    async def set_replicas(self, name: str, replicas: int, *, dry_run: bool = False) -> ServiceStatus:
        group = self._group(name)
        group.check_replicas(replicas)
        if dry_run:
            return group.status().model_copy(update={"replicas": replicas})
        await group.scale(replicas)
        return group.status()

    async def set_resources(self, name: str, resources: Resources, *, dry_run: bool = False) -> ServiceStatus:
        """Record requests and limits; the memory limit is enforced (a replica above it is killed and restarted)."""
        group = self._group(name)
        merged = group.resources.model_copy(update=resources.model_dump(exclude_none=True))
        if dry_run:
            return group.status().model_copy(update={"resources": merged})
        group.resources = merged
        return group.status()

    async def usage(self, name: str) -> ServiceUsage:
        group = self._group(name)
        return ServiceUsage(
            service=name,
            at=datetime.now(UTC),
            replicas=group.usage(),
            resources=group.resources,
            requests_total=group.proxy.answered,
        )

    async def inject(self, request: FaultRequest) -> Fault:
        group = self._group(request.service)
        chosen = self._chosen_replicas(group, request)
        if request.dry_run:
            self._check_fault(group, request)
            return new_fault(request, chosen, FaultState.PLANNED)
        self._check_fault(group, request)
        fault = new_fault(request, chosen)
        undo = await self._apply(group, fault)
        self.book.add(fault, undo)
        self._export_faults()
        return fault

    async def faults(self, service: str | None = None) -> list[Fault]:
        if service is not None:
            self._group(service)
        return self.book.all(service)

    async def revert(self, fault_id: str) -> Fault | None:
        fault = await self.book.revert(fault_id)
        self._export_faults()
        return fault

    # Internals.

    def _group(self, name: str) -> ServiceGroup:
        group = self._groups.get(name)
        if group is None:
            raise UnknownService(name, list(self._groups))
        return group

    async def _start_proxies(self) -> None:
        for name, spec in self.config.services.items():
            proxy = ServiceProxy(name, self.host, spec.port, self.metrics, self._effects_for(name))
            await proxy.start()
            self._groups[name] = ServiceGroup(
                name,
                spec,
                proxy,
                self.metrics,
                self._command_maker(name, spec),
                logs_dir=self._logs_dir,
                client=self._client,
                restart_backoff_max_s=self.config.restart_backoff_max.total_seconds(),
            )
            for dependency, upstream in spec.dependencies.items():
                proxy_to = DependencyProxy(dependency, upstream, self._delay_for(name, dependency))
                await proxy_to.start()
                self._dependencies[(name, dependency)] = proxy_to

    def _effects_for(self, service: str) -> EffectsFor:
        return lambda replica: self.book.proxy_effects(service, replica)

    def _delay_for(self, service: str, dependency: str) -> Callable[[], float]:
        return lambda: self.book.dependency_delay(service, dependency)

    def _command_maker(self, name: str, spec: FleetService) -> CommandFor:
        def command_for(port: int) -> tuple[list[str], dict[str, str]]:
            expand = self._expander(name, spec, port)
            return [expand(part) for part in spec.command], {key: expand(value) for key, value in spec.env.items()}

        return command_for

    def _expander(self, name: str, spec: FleetService, port: int) -> Callable[[str], str]:
        def value(match: re.Match[str]) -> str:
            key, argument = match.group(1), match.group(2)
            if key == "python":
                return sys.executable
            if key == "port":
                return str(port)
            if key == "dataDir":
                return str(_data_dir(spec, name))
            if key == "service":
                return f"http://127.0.0.1:{self.config.services[argument].port}"
            return self._dependencies[(name, argument)].address

        return lambda text: PLACEHOLDER.sub(value, text)

    def _chosen_replicas(self, group: ServiceGroup, request: FaultRequest) -> list[str]:
        running = [pod.id for pod in group.status().pods]
        unknown = sorted(set(request.replicas) - set(running))
        if unknown:
            raise UnsupportedFault(
                f"service {group.name}: no running replica {', '.join(unknown)}; running: {', '.join(running)}",
                details={"replicas": unknown},
            )
        return request.replicas or running

    def _check_fault(self, group: ServiceGroup, request: FaultRequest) -> None:
        spec = request.fault
        if isinstance(spec, SlowDependency) and spec.dependency not in group.spec.dependencies:
            declared = ", ".join(group.spec.dependencies) or "none"
            raise UnsupportedFault(
                f"service {group.name} has no dependency {spec.dependency!r} (declared: {declared})",
                details={"dependency": spec.dependency},
            )
        if isinstance(spec, DiskFill) and group.spec.data_dir is None:
            raise UnsupportedFault(f"service {group.name} declares no dataDir to fill")

    async def _apply(self, group: ServiceGroup, fault: Fault) -> Undo | None:
        """Start what the fault needs outside the proxy; the undo callback, or None."""
        spec = fault.fault
        chosen = [group.replicas[replica_id] for replica_id in fault.replicas if replica_id in group.replicas]
        ttl_s = max(0.1, (fault.expires_at - datetime.now(UTC)).total_seconds())
        if isinstance(spec, ServiceUnavailable) and spec.mode == "pause":
            for replica in chosen:
                replicas.pause(replica, True)
            return self._unpause(chosen)
        arguments = _worker_arguments(spec, group, fault, ttl_s)
        if arguments is None:
            return None
        for replica in chosen:
            workers = []
            for worker_arguments in arguments:
                workers.append(await _start_worker(replica, ttl_s, worker_arguments))
            replica.fault_workers[fault.id] = workers
        return self._stop_workers(chosen, fault.id)

    def _unpause(self, chosen: list[replicas.Replica]) -> Undo:
        async def undo() -> None:
            for replica in chosen:
                replicas.pause(replica, False)

        return undo

    def _stop_workers(self, chosen: list[replicas.Replica], fault_id: str) -> Undo:
        async def undo() -> None:
            await asyncio.gather(*(replicas.stop_fault_workers(replica, fault_id) for replica in chosen))

        return undo

    async def _watch(self) -> None:
        interval_s = self.config.usage_interval.total_seconds()
        while True:
            for group in self._groups.values():
                group.sample()
            ended = await self.book.reap()
            if ended:
                log.info("faults ended by their time-to-live: %s", ", ".join(fault.id for fault in ended))
                self._sweep_fill_files()
                self._export_faults()
            await asyncio.sleep(min(interval_s, 0.5) if self.book.active() else interval_s)

    def _export_faults(self) -> None:
        self.metrics.active_faults.clear()
        for fault in self.book.active():
            self.metrics.active_faults.labels(service=fault.service, type=fault.fault.type.value).inc()

    def _sweep_fill_files(self, *, everything: bool = False) -> None:
        """Remove disk-fill files whose fault is over (left behind if a fault worker was killed)."""
        active = {fault.id for fault in self.book.active()}
        now = time.time()
        for name, spec in self.config.services.items():
            if spec.data_dir is None:
                continue
            directory = _data_dir(spec, name)
            for path in directory.glob(f"{FILL_PREFIX}*") if directory.is_dir() else []:
                match = FILL_NAME.match(path.name)
                over = match is None or int(match["expires"]) <= now or match["fault"] not in active
                if everything or over:
                    path.unlink(missing_ok=True)


def _data_dir(spec: FleetService, name: str) -> Path:
    assert spec.data_dir is not None, f"service {name} declares no dataDir"
    spec.data_dir.mkdir(parents=True, exist_ok=True)
    return spec.data_dir.resolve()


def _worker_arguments(spec: object, group: ServiceGroup, fault: Fault, ttl_s: float) -> list[list[str]] | None:
    if isinstance(spec, CpuStress):
        return [["cpu", "--load", str(spec.load_percent)] for _ in range(spec.workers)]
    if isinstance(spec, MemoryGrowth):
        return [["memory", "--rate-mb", str(spec.rate_mb_per_s), "--cap-mb", str(spec.cap_mb)]]
    if isinstance(spec, DiskFill):
        expires = int(fault.expires_at.timestamp())
        file = f"{FILL_PREFIX}{fault.id}-{expires}"
        directory = str(_data_dir(group.spec, group.name))
        fill = ["--fill-percent", str(spec.fill_percent), "--floor-mb", str(spec.floor_mb)]
        return [["disk", "--path", directory, "--file", file, *fill]]
    return None


async def _start_worker(replica: replicas.Replica, ttl_s: float, arguments: list[str]) -> asyncio.subprocess.Process:
    command = [
        sys.executable,
        "-m",
        "tmsops.fleet.fault_worker",
        "--ttl",
        f"{ttl_s:.3f}",
        "--watch-pid",
        str(replica.pid),
    ]
    return await asyncio.create_subprocess_exec(
        *command,
        *arguments,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=replicas.die_with_parent(),
    )


def _check_placeholders(name: str, spec: FleetService, config: FleetConfig) -> None:
    """Refuse a placeholder the fleet cannot fill, naming the service and the value."""
    for text in [*spec.command, *spec.env.values()]:
        for match in PLACEHOLDER.finditer(text):
            key, argument = match.group(1), match.group(2)
            known = (
                (key in {"python", "port"} and argument is None)
                or (key == "dataDir" and argument is None and spec.data_dir is not None)
                or (key == "service" and argument in config.services)
                or (key == "dependency" and argument in spec.dependencies)
            )
            if not known:
                raise SettingsError(f"fleet.services.{name}: {match.group(0)} in {text!r} names nothing declared")
