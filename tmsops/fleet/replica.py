"""One replica: a real process on a free port, its log, its readiness and its resource usage."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

from tmsops.targets.base import StartFailed

READY_POLL_S = 0.1
LOG_TAIL_BYTES = 1500
PORT_IN_USE_MARKERS = ("address already in use", "errno 98")

log = logging.getLogger("tmsops.fleet")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent(signum: int = signal.SIGKILL) -> Callable[[], object] | None:
    """A pre-exec hook: the child gets ``signum`` when the fleet's thread dies (Linux only)."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1
    return functools.partial(prctl, pr_set_pdeathsig, signum)


@dataclass
class Replica:
    id: str
    service: str
    port: int
    process: asyncio.subprocess.Process
    log_path: Path
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_monotonic: float = field(default_factory=time.monotonic)
    ready: bool = False
    stopping: bool = False
    restarts: int = 0
    fault_workers: dict[str, list[asyncio.subprocess.Process]] = field(default_factory=dict)
    cpu_cores: float = 0.0
    memory_bytes: int = 0
    _cpu_seconds: float | None = None
    _sampled_at: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def pids(self) -> list[int]:
        """The replica's process, its children, and its fault workers."""
        pids = [self.pid]
        with contextlib.suppress(psutil.Error):
            pids += [child.pid for child in psutil.Process(self.pid).children(recursive=True)]
        pids += [
            worker.pid for workers in self.fault_workers.values() for worker in workers if worker.returncode is None
        ]
        return pids

    def sample(self, now: float) -> None:
        """Update ``cpu_cores`` (since the last sample) and ``memory_bytes`` from the processes' counters."""
        cpu_seconds, memory = 0.0, 0
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                times = process.cpu_times()
                cpu_seconds += times.user + times.system
                memory += process.memory_info().rss
        if self._cpu_seconds is not None and self._sampled_at is not None and now > self._sampled_at:
            self.cpu_cores = max(0.0, (cpu_seconds - self._cpu_seconds) / (now - self._sampled_at))
        self._cpu_seconds, self._sampled_at = cpu_seconds, now
        self.memory_bytes = memory

    def log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(max(0, self.log_path.stat().st_size - LOG_TAIL_BYTES))
                return handle.read().decode(errors="replace").strip()
        except OSError:
            return ""


async def spawn(
    replica_id: str, service: str, command: list[str], env: dict[str, str], port: int, log_path: Path
) -> Replica:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=die_with_parent(),
                start_new_session=True,
            )
        except OSError as error:
            raise StartFailed(f"{replica_id}: cannot run {command[0]!r}: {error.strerror or error}") from error
    return Replica(replica_id, service, port, process, log_path)


async def wait_ready(replica: Replica, client: httpx.AsyncClient, health_path: str, timeout_s: float) -> None:
    """Poll the health path until it answers 200; raise StartFailed if the process exits or time runs out."""
    url = f"http://127.0.0.1:{replica.port}{health_path}"
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if not replica.alive:
            code = replica.process.returncode
            raise StartFailed(
                f"{replica.id} exited with code {code} before it was ready:\n{replica.log_tail()}",
                details={"replica": replica.id, "log": str(replica.log_path)},
            )
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get(url, timeout=1.0)).status_code == 200:
                replica.ready = True
                return
        await asyncio.sleep(READY_POLL_S)
    raise StartFailed(
        f"{replica.id} was not ready on {url} within {timeout_s:.0f} s:\n{replica.log_tail()}",
        details={"replica": replica.id, "log": str(replica.log_path)},
    )


def lost_port_race(replica: Replica) -> bool:
    tail = replica.log_tail().lower()
    return any(marker in tail for marker in PORT_IN_USE_MARKERS)


async def terminate(replica: Replica, grace_s: float) -> None:
    """SIGTERM the replica's process group (SIGCONT first, in case it is paused), SIGKILL after ``grace_s``."""
    replica.stopping = True
    await stop_fault_workers(replica)
    if not replica.alive:
        return
    _signal_group(replica.pid, signal.SIGCONT)
    _signal_group(replica.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(replica.process.wait(), grace_s)
    except TimeoutError:
        log.warning("%s did not stop within %.0f s of SIGTERM; sending SIGKILL", replica.id, grace_s)
        _signal_group(replica.pid, signal.SIGKILL)
        await replica.process.wait()


def kill(replica: Replica) -> None:
    _signal_group(replica.pid, signal.SIGKILL)


def pause(replica: Replica, paused: bool) -> None:
    _signal_group(replica.pid, signal.SIGSTOP if paused else signal.SIGCONT)


async def stop_fault_workers(replica: Replica, fault_id: str | None = None) -> None:
    keys = [fault_id] if fault_id else list(replica.fault_workers)
    workers = [worker for key in keys for worker in replica.fault_workers.pop(key, [])]
    for worker in workers:
        if worker.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.terminate()
    for worker in workers:
        try:
            await asyncio.wait_for(worker.wait(), 5.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                worker.kill()
            await worker.wait()


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)
