"""The replicas of one service: scaling up and down, and restarting crashed replicas with backoff.

Scale up starts the new replicas together, waits until each is ready, then adds them to
the proxy's pool; when one fails to start, the ones started for the same request are
stopped again and the error says why, so nothing is left half-started. Scale down takes
the newest replicas out of the pool, waits for their requests in flight, then stops them
(SIGTERM, SIGKILL after a grace period).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tmsops.fleet import replica as replicas
from tmsops.fleet.metrics import FleetMetrics
from tmsops.fleet.proxy import ServiceProxy
from tmsops.fleet.replica import Replica
from tmsops.settings import FleetService
from tmsops.targets.base import ReplicasOutOfRange, StartFailed
from tmsops.targets.model import Replica as ReplicaView
from tmsops.targets.model import ReplicaUsage, Resources, ServiceStatus

PORT_ATTEMPTS = 3
STABLE_AFTER_S = 60.0

log = logging.getLogger("tmsops.fleet")

CommandFor = Callable[[int], tuple[list[str], dict[str, str]]]


class ServiceGroup:
    def __init__(
        self,
        name: str,
        spec: FleetService,
        proxy: ServiceProxy,
        metrics: FleetMetrics,
        command_for: CommandFor,
        *,
        logs_dir: Path,
        client: httpx.AsyncClient,
        restart_backoff_max_s: float,
    ) -> None:
        self.name = name
        self.spec = spec
        self.proxy = proxy
        self.desired = spec.replicas
        self.replicas: dict[str, Replica] = {}
        self.resources = Resources(
            cpu_request=spec.cpu_request,
            cpu_limit=spec.cpu_limit,
            memory_request=spec.memory_request,
            memory_limit=spec.memory_limit,
        )
        self._metrics = metrics
        self._command_for = command_for
        self._logs_dir = logs_dir
        self._client = client
        self._backoff_max_s = restart_backoff_max_s
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._watchers: set[asyncio.Task[None]] = set()
        self._closing = False

    def check_replicas(self, count: int) -> None:
        if not self.spec.min_replicas <= count <= self.spec.max_replicas:
            raise ReplicasOutOfRange(self.name, count, self.spec.min_replicas, self.spec.max_replicas)

    async def scale(self, count: int) -> None:
        self.check_replicas(count)
        async with self._lock:
            current = [replica for replica in self.replicas.values() if not replica.stopping]
            if count > len(current):
                await self._start_many(count - len(current))
            elif count < len(current):
                newest = sorted(current, key=lambda replica: replica.started_at)[count:]
                await asyncio.gather(*(self._retire(replica) for replica in newest))
            self.desired = count
            self._export()

    async def close(self) -> None:
        self._closing = True
        async with self._lock:
            await asyncio.gather(*(self._retire(replica) for replica in list(self.replicas.values())))
        for task in list(self._watchers):
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)

    def status(self) -> ServiceStatus:
        pods = [
            ReplicaView(
                id=replica.id,
                ready=replica.ready and replica.id in self.proxy.replicas,
                started_at=replica.started_at,
                restarts=replica.restarts,
                address=f"127.0.0.1:{replica.port}",
            )
            for replica in self.replicas.values()
            if not replica.stopping
        ]
        return ServiceStatus(
            name=self.name,
            replicas=self.desired,
            ready_replicas=sum(pod.ready for pod in pods),
            min_replicas=self.spec.min_replicas,
            max_replicas=self.spec.max_replicas,
            resources=self.resources,
            pods=pods,
        )

    def usage(self) -> list[ReplicaUsage]:
        return [
            ReplicaUsage(replica=replica.id, cpu_cores=replica.cpu_cores, memory_bytes=replica.memory_bytes)
            for replica in self.replicas.values()
            if replica.alive and not replica.stopping
        ]

    def sample(self) -> None:
        """Refresh usage, kill replicas above their memory limit, export the gauges."""
        now = time.monotonic()
        for replica in list(self.replicas.values()):
            if not replica.alive or replica.stopping:
                continue
            replica.sample(now)
            limit = self.resources.memory_limit
            if limit is not None and replica.memory_bytes > limit:
                log.warning(
                    "%s uses %d bytes, above its memory limit %d: killed (OOM)", replica.id, replica.memory_bytes, limit
                )
                replicas.kill(replica)
        self._export()

    async def _start_many(self, count: int) -> None:
        results = await asyncio.gather(*(self._start_one() for _ in range(count)), return_exceptions=True)
        started = [result for result in results if isinstance(result, Replica)]
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            await asyncio.gather(*(self._retire(replica) for replica in started))
            raise failures[0]
        for replica in started:
            await self.proxy.add(replica.id, "127.0.0.1", replica.port)

    async def _start_one(self, replica_id: str | None = None, restarts: int = 0) -> Replica:
        replica_id = replica_id or f"{self.name}-{next(self._ids)}"
        for attempt in range(PORT_ATTEMPTS):
            replica = await self._spawn(replica_id)
            replica.restarts = restarts
            self.replicas[replica_id] = replica
            try:
                await replicas.wait_ready(
                    replica, self._client, self.spec.health_path, self.spec.start_timeout.total_seconds()
                )
            except StartFailed:
                await replicas.terminate(replica, self.spec.stop_grace.total_seconds())
                self.replicas.pop(replica_id, None)
                if attempt + 1 < PORT_ATTEMPTS and replicas.lost_port_race(replica):
                    continue
                raise
            self._watch(replica)
            return replica
        raise AssertionError("unreachable")

    async def _spawn(self, replica_id: str) -> Replica:
        port = replicas.free_port()
        command, env = self._command_for(port)
        full_env = {**os.environ, **env, "PORT": str(port), "TMSOPS_SERVICE": self.name, "TMSOPS_REPLICA": replica_id}
        return await replicas.spawn(
            replica_id, self.name, command, full_env, port, self._logs_dir / f"{replica_id}.log"
        )

    async def _retire(self, replica: Replica) -> None:
        replica.stopping = True
        await self.proxy.drain(replica.id, self.spec.drain_timeout.total_seconds())
        await replicas.terminate(replica, self.spec.stop_grace.total_seconds())
        self.replicas.pop(replica.id, None)

    def _watch(self, replica: Replica) -> None:
        task = asyncio.create_task(self._await_exit(replica), name=f"watch {replica.id}")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _await_exit(self, replica: Replica) -> None:
        code = await replica.process.wait()
        if replica.stopping or self._closing:
            return
        self.proxy.drop(replica.id)
        await replicas.stop_fault_workers(replica)
        self._metrics.restarts.labels(service=self.name).inc()
        log.warning("%s exited with code %s; restarting:\n%s", replica.id, code, replica.log_tail())
        stable = time.monotonic() - replica.started_monotonic > STABLE_AFTER_S
        await self._restart(replica, 0 if stable else replica.restarts)

    async def _restart(self, crashed: Replica, failures: int) -> None:
        """Start a replacement under the same id after a backoff that doubles with each failure."""
        while not self._closing:
            await asyncio.sleep(min(self._backoff_max_s, 2.0 ** min(failures, 10)))
            async with self._lock:
                if self._closing or self.replicas.get(crashed.id) is not crashed:
                    return
                try:
                    replacement = await self._start_one(crashed.id, crashed.restarts + 1)
                except StartFailed as error:
                    log.error("%s could not restart: %s", crashed.id, error.message)
                    self.replicas[crashed.id] = crashed
                    failures += 1
                    continue
                await self.proxy.add(replacement.id, "127.0.0.1", replacement.port)
                self._export()
                return

    def _export(self) -> None:
        metrics, name = self._metrics, self.name
        metrics.replicas.labels(service=name).set(self.desired)
        metrics.ready_replicas.labels(service=name).set(len(self.proxy.replicas))
        metrics.cpu_cores.labels(service=name).set(sum(usage.cpu_cores for usage in self.usage()))
        metrics.memory_bytes.labels(service=name).set(sum(usage.memory_bytes for usage in self.usage()))
        metrics.cpu_request.labels(service=name).set(self.resources.cpu_request or 0)
        metrics.memory_request.labels(service=name).set(self.resources.memory_request or 0)
