"""``tmsops up``: start the platform's processes, wait until each is healthy, print where they are.

The parts: the model server, the local fleet, the autoscaler, the optimizer and the chaos service.

The processes start in order (the model server first: the services call it), each in its own
process group with its output in ``<stateDir>/logs/<name>.log``. A process that exits or is
not healthy in time stops the start-up: what was started is stopped again and the error
shows the end of its log. Ctrl-C (or SIGTERM) stops everything in reverse order: SIGTERM to
each process group, SIGKILL after a grace period, so no process is left behind.

The core runs the wings only as commands (``python -m actuators.autoscaler``), never imports them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from tmsops.auth import ensure_admin_token
from tmsops.errors import PermanentError
from tmsops.settings import CoreSettings, FleetSettings

STOP_GRACE_S = 15.0
POLL_S = 0.25


@dataclass(frozen=True)
class Part:
    name: str
    command: list[str]
    health_url: str
    start_timeout_s: float
    url: str


class StartUpFailed(PermanentError):
    """A part of the platform did not start; the message holds the end of its log."""


def platform_parts(settings: CoreSettings, fleet: FleetSettings) -> list[Part]:
    python = sys.executable
    host = settings.host
    model_server = settings.model_server_url.rstrip("/")
    control = f"http://{host}:{fleet.fleet.control_port}"
    autoscaler = f"http://{host}:{settings.ports.autoscaler}"
    chaos = f"http://{host}:{settings.ports.chaos}"
    optimizer = f"http://{host}:{settings.ports.optimizer}"
    return [
        Part("model server", [python, "-m", "serving"], f"{model_server}/readyz", 300.0, f"{model_server}/docs"),
        Part("fleet", [python, "-m", "tmsops.fleet", "run"], f"{control}/health", 120.0, f"{control}/docs"),
        Part(
            "autoscaler",
            [python, "-m", "actuators.autoscaler"],
            f"{autoscaler}/health",
            60.0,
            f"{autoscaler}/dashboard",
        ),
        Part("optimizer", [python, "-m", "actuators.optimizer"], f"{optimizer}/health", 60.0, f"{optimizer}/dashboard"),
        Part("chaos", [python, "-m", "chaos"], f"{chaos}/health", 60.0, f"{chaos}/dashboard"),
    ]


@dataclass
class Started:
    part: Part
    process: subprocess.Popen[bytes]
    log: Path


def up(settings: CoreSettings, fleet: FleetSettings, parts: list[Part] | None = None) -> None:
    """Start every part, print the URLs and the admin token, and wait until interrupted."""
    token = ensure_admin_token(settings.state_dir, database_url=settings.database_url)
    with running(parts or platform_parts(settings, fleet), settings.state_dir / "logs") as started:
        print("tmsops is up:")
        for item in started:
            print(f"  {item.part.name:<13} {item.part.url}   (log: {item.log})")
        if token:
            print(f"admin token (shown once, keep it): {token}")
        print("Ctrl-C stops everything.", flush=True)
        wait_for_exit(started)


@contextmanager
def running(parts: list[Part], logs: Path) -> Iterator[list[Started]]:
    started: list[Started] = []
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for part in parts:
            started.append(_start(part, logs))
            _wait_healthy(started[-1])
        yield started
    except KeyboardInterrupt:
        pass
    finally:
        for item in reversed(started):
            _stop(item)
        signal.signal(signal.SIGTERM, previous)


def wait_for_exit(started: list[Started]) -> None:
    """Block until a part exits (an error) or Ctrl-C."""
    while True:
        for item in started:
            if item.process.poll() is not None:
                raise StartUpFailed(f"{item.part.name} exited with code {item.process.returncode}:\n{_tail(item.log)}")
        time.sleep(POLL_S * 4)


def _start(part: Part, logs: Path) -> Started:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{part.name.replace(' ', '-')}.log"
    print(f"starting {part.name} ...", flush=True)
    with log.open("ab") as output:
        process = subprocess.Popen(
            part.command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    return Started(part, process, log)


def _wait_healthy(item: Started) -> None:
    deadline = time.monotonic() + item.part.start_timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if item.process.poll() is not None:
                raise StartUpFailed(f"{item.part.name} exited with code {item.process.returncode}:\n{_tail(item.log)}")
            with suppress(httpx.HTTPError):
                if client.get(item.part.health_url).status_code == 200:
                    return
            time.sleep(POLL_S)
    raise StartUpFailed(
        f"{item.part.name} was not healthy within {item.part.start_timeout_s:.0f} s:\n{_tail(item.log)}"
    )


def _stop(item: Started) -> None:
    if item.process.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(item.process.pid, signal.SIGTERM)
    try:
        item.process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(item.process.pid, signal.SIGKILL)
        item.process.wait()
    print(f"stopped {item.part.name}", flush=True)


def _tail(log: Path, size: int = 2000) -> str:
    try:
        return log.read_bytes()[-size:].decode(errors="replace")
    except OSError:
        return "(no log)"


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt
