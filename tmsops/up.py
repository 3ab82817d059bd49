"""``tmsops up | down | status``: start the platform's processes, stop them, say how they are.

The parts: the MLflow UI, the model server, the local fleet, the autoscaler, the optimizer and
the chaos service; with ``--demo``, also the demo's story (:mod:`tmsops.demo.scenario`:
traffic, a chaos experiment, the optimizer's index advice).

The processes start in order (the model server first: the services call it), each in its own
process group with its output in ``<stateDir>/logs/<name>.log``; a part that nothing waits
on (the MLflow UI) starts first and is waited for at the end. A process that exits or is not
healthy in time stops the start-up: what was started is stopped again and the error shows
the end of its log. Ctrl-C (or SIGTERM, which ``tmsops down`` sends through
``<stateDir>/up.pid``) stops everything in reverse order: SIGTERM to each process group,
SIGKILL after a grace period, so no process is left behind.

The core runs the wings only as commands (``python -m actuators.autoscaler``), never imports them.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

import httpx
import psutil

from tmsops.auth import TOKEN_PREFIX, Scope, TokenStore, ensure_admin_token
from tmsops.errors import PermanentError
from tmsops.settings import CoreSettings, FleetSettings
from tmsops.state import make_engine

STOP_GRACE_S = 15.0
POLL_S = 0.25
PID_FILE = "up.pid"
MLFLOW_UI_PORT = 5000
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


@dataclass(frozen=True)
class Part:
    """One process of the platform. Without ``health_url`` it counts as started while it runs.

    ``wait``: the next part starts only once this one is healthy (otherwise it is waited for
    after the others). ``console``: its output goes to the terminal as well as to its log.
    """

    name: str
    command: list[str]
    health_url: str | None
    start_timeout_s: float
    url: str
    wait: bool = True
    console: bool = False
    env: dict[str, str] = field(default_factory=dict)


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
    mlflow = f"http://{host}:{MLFLOW_UI_PORT}"
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    # one worker and no job runner (MLflow's own background jobs): a UI for one person on one machine
    mlflow_ui = [python, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri, "--workers", "1"]
    return [
        Part(
            "mlflow ui",
            [*mlflow_ui, "--host", host, "--port", str(MLFLOW_UI_PORT)],
            f"{mlflow}/health",
            180.0,
            mlflow,
            wait=False,
            env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        ),
        Part(
            "model server",
            [python, "-m", "serving"],
            f"{model_server}/readyz",
            300.0,
            f"{model_server}/docs",
            env={"TMSOPS_SERVING_TRACKING_URI": os.environ.get("TMSOPS_SERVING_TRACKING_URI", tracking_uri)},
        ),
        Part("fleet", [python, "-m", "tmsops.fleet", "run"], f"{control}/health", 180.0, f"{control}/docs"),
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


def demo_part(token: str) -> Part:
    """The demo's story: traffic, a chaos experiment, the optimizer's advice (prints to the terminal)."""
    command = [sys.executable, "-m", "tmsops.demo.scenario"]
    return Part("demo", command, None, 10.0, "", console=True, env={"TMSOPS_DEMO_TOKEN": token})


@dataclass
class Started:
    part: Part
    process: subprocess.Popen[bytes]
    log: Path
    at: float = field(default_factory=time.monotonic)


def up(settings: CoreSettings, fleet: FleetSettings, *, config: Path | None = None, demo: bool = False) -> None:
    """Start every part, print the URLs and the admin token, and wait until interrupted.

    ``config``: the settings file, passed on to every part. ``demo``: run the demo's story too.
    """
    token = ensure_admin_token(settings.state_dir, database_url=settings.database_url)
    parts = platform_parts(settings, fleet)
    if demo:
        parts.append(demo_part(issue_token(settings, "demo", Scope.OPERATE)))
    if config is not None:
        parts = [replace(part, env={**part.env, "TMSOPS_CONFIG": str(config.resolve())}) for part in parts]
    started_at = time.monotonic()
    with pid_file(settings.state_dir), running(parts, settings.state_dir / "logs") as started:
        print(f"tmsops is up ({time.monotonic() - started_at:.0f} s):")
        for item in started:
            if item.part.url:
                print(f"  {item.part.name:<13} {item.part.url}   (log: {item.log})")
        if token:
            print(f"admin token (shown once, keep it): {token}")
        else:
            print("admin token: printed when it was created; `tmsops token NAME --scope admin` makes another")
        print("Ctrl-C (or `tmsops down`) stops everything.", flush=True)
        wait_for_exit(started)


def issue_token(settings: CoreSettings, name: str, scope: Scope) -> str:
    """A fresh token ``name`` in the state store (it replaces one of that name)."""
    engine = make_engine(settings.state_database_url)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        TokenStore(engine).register(secret, name, scope)
        return secret
    finally:
        engine.dispose()


@contextmanager
def pid_file(state_dir: Path) -> Iterator[Path]:
    """``<state_dir>/up.pid`` while ``up`` runs; refuses a second ``up`` on the same state."""
    path = state_dir / PID_FILE
    running_pid = read_pid(path)
    if running_pid is not None:
        raise StartUpFailed(f"tmsops is already up (pid {running_pid}); `tmsops down` stops it")
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n")
    try:
        yield path
    finally:
        with suppress(FileNotFoundError):
            if read_pid(path) == os.getpid():
                path.unlink()


def read_pid(path: Path) -> int | None:
    """The pid in ``path`` if that process still runs; a stale file is removed."""
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        return pid
    with suppress(FileNotFoundError):
        path.unlink()
    return None


def down(state_dir: Path, timeout_s: float = 120.0) -> int | None:
    """Stop the ``tmsops up`` of ``state_dir`` and wait until it has stopped every part; its pid, or None."""
    pid = read_pid(state_dir / PID_FILE)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    try:
        psutil.Process(pid).wait(timeout_s)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired as error:
        raise StartUpFailed(f"tmsops up (pid {pid}) has not stopped within {timeout_s:.0f} s") from error
    return pid


@dataclass(frozen=True)
class PartStatus:
    name: str
    url: str
    healthy: bool
    detail: str


def status(settings: CoreSettings, fleet: FleetSettings) -> list[PartStatus]:
    """Each part's health, as its health endpoint answers now."""
    answers = []
    with httpx.Client(timeout=3.0) as client:
        for part in platform_parts(settings, fleet):
            assert part.health_url is not None
            try:
                response = client.get(part.health_url)
            except httpx.HTTPError as error:
                answers.append(PartStatus(part.name, part.url, False, f"not reachable ({type(error).__name__})"))
                continue
            healthy = response.status_code == 200
            answers.append(PartStatus(part.name, part.url, healthy, f"HTTP {response.status_code}"))
    return answers


@contextmanager
def running(parts: list[Part], logs: Path, grace_s: float = STOP_GRACE_S) -> Iterator[list[Started]]:
    started: list[Started] = []
    # Ctrl-C and SIGTERM stop everything, even where SIGINT came in ignored (a background job)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    previous_interrupt = signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        for part in parts:
            if part.health_url is None:  # a client of the platform (the demo's story): once all is healthy
                _wait_all_healthy(started)
            started.append(_start(part, logs))
            if part.wait:
                _wait_healthy(started[-1])
        _wait_all_healthy(started)
        yield started
    except KeyboardInterrupt:
        pass
    finally:
        # a second Ctrl-C must not cut the stop short: that is how processes are left behind
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if started:
                _say(f"stopping {len(started)} part(s), at most {grace_s:.0f} s each ...")
            for item in reversed(started):
                _stop(item, grace_s)
        finally:
            signal.signal(signal.SIGINT, previous_interrupt)
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
    _say(f"starting {part.name} ...")
    env = {**os.environ, **part.env}
    with log.open("ab") as output:
        process = subprocess.Popen(
            part.command,
            stdout=subprocess.PIPE if part.console else output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    if process.stdout is not None:
        threading.Thread(target=_tee, args=(process.stdout, log), daemon=True, name=f"{part.name} output").start()
    return Started(part, process, log)


def _tee(output: IO[bytes], log: Path) -> None:
    """Copy a console part's output, line by line, to the terminal and to its log."""
    with output, log.open("ab") as copy:
        for line in output:
            copy.write(line)
            copy.flush()
            with suppress(OSError, ValueError):
                sys.stdout.write(line.decode(errors="replace"))
                sys.stdout.flush()


def _wait_all_healthy(started: list[Started]) -> None:
    for item in started:
        if not item.part.wait:
            _wait_healthy(item)


def _wait_healthy(item: Started) -> None:
    deadline = item.at + item.part.start_timeout_s
    if item.part.health_url is None:
        return
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


def _stop(item: Started, grace_s: float) -> None:
    """SIGTERM to the part's process group, SIGKILL to what is left of it after the grace period.

    The whole group, not only the process started: a part's workers (MLflow's, BentoML's, the
    fleet's replicas) may outlive it otherwise.
    """
    group = item.process.pid
    _signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _group_members(item) and time.monotonic() < deadline:
        time.sleep(POLL_S / 5)
    if _group_members(item):
        _signal_group(group, signal.SIGKILL)
    item.process.wait()
    _say(f"stopped {item.part.name}")


def _signal_group(group: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)


def _group_members(item: Started) -> list[int]:
    """The live (not zombie) processes of the part's process group; the part's own is reaped first."""
    item.process.poll()
    members = []
    for process in psutil.process_iter(["pid", "status"]):
        with suppress(psutil.Error, ProcessLookupError):
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == item.process.pid:
                members.append(process.pid)
    return members


def _say(line: str) -> None:
    """Print a line; a terminal that has gone away must not stop a shutdown half-way."""
    with suppress(OSError, ValueError):
        print(line, flush=True)


def _tail(log: Path, size: int = 2000) -> str:
    try:
        return log.read_bytes()[-size:].decode(errors="replace")
    except OSError:
        return "(no log)"


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt
