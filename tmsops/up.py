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
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

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
            f"{model_server}/",
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

    ``config``: the settings file, passed on to every part. ``demo``: run the demo's story too,
    in an environment without ``TMSOPS_*`` overrides (the demo's settings are its own).
    The caller holds the state's :func:`pid_file`.
    """
    parts = platform_parts(settings, fleet)
    busy = ports_in_use(parts, fleet)
    if busy:
        raise StartUpFailed(f"ports in use: {', '.join(busy)}; stop what listens there (`tmsops down`?)")
    environ: Mapping[str, str] = os.environ
    if demo:
        environ, dropped = demo_environment(os.environ)
        if dropped:
            _say(f"demo: leaving out your overrides {', '.join(sorted(dropped))} (the demo has its own settings)")
    token = ensure_admin_token(settings.state_dir, database_url=settings.database_url)
    if demo:
        parts.append(demo_part(issue_token(settings, "demo", Scope.OPERATE)))
    if config is not None:
        parts = [replace(part, env={**part.env, "TMSOPS_CONFIG": str(config.resolve())}) for part in parts]
    started_at = time.monotonic()
    with running(parts, settings.state_dir / "logs", environ=environ) as started:
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


def demo_environment(environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """``environ`` without the ``TMSOPS_*`` overrides of settings (the demo must not act on a
    cluster or a database named in the shell); the state directory and the demo's own are kept."""
    kept_prefixes = ("TMSOPS_DEMO_", "TMSOPS_SERVING_", "TMSOPS_STATE_DIR")
    dropped = [name for name in environ if name.startswith("TMSOPS_") and not name.startswith(kept_prefixes)]
    return {name: value for name, value in environ.items() if name not in dropped}, dropped


def ports_in_use(parts: list[Part], fleet: FleetSettings) -> list[str]:
    """The ports the platform would listen on that something already answers on, each with its user."""
    wanted: dict[tuple[str, int], str] = {}
    for part in parts:
        if part.health_url:
            address = urlsplit(part.health_url)
            wanted[(address.hostname or "127.0.0.1", address.port or 80)] = part.name
    if fleet.target.kind == "fleet":
        for name, service in fleet.fleet.services.items():
            wanted[(fleet.host, service.port)] = name
    busy = []
    for (host, port), name in wanted.items():
        with socket.socket() as sock:
            sock.settimeout(1.0)
            if sock.connect_ex((host, port)) == 0:
                busy.append(f"{port} ({name})")
    return busy


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
    path.write_text(f"{os.getpid()} {psutil.Process().create_time()}\n")
    try:
        yield path
    finally:
        with suppress(FileNotFoundError):
            if read_pid(path) == os.getpid():
                path.unlink()


def read_pid(path: Path) -> int | None:
    """The pid in ``path`` if that process (the same one: its start time matches) still runs;
    a stale file is removed."""
    try:
        pid_text, _, created_text = path.read_text().strip().partition(" ")
        pid, created = int(pid_text), float(created_text or "nan")
    except (FileNotFoundError, ValueError):
        return None
    try:
        process = psutil.Process(pid)
        alive = process.status() != psutil.STATUS_ZOMBIE and abs(process.create_time() - created) < 1.0
    except psutil.Error:
        alive = False
    if alive:
        return pid
    with suppress(FileNotFoundError):
        path.unlink()
    return None


def down(state_dir: Path, timeout_s: float = 120.0) -> int | None:
    """Stop the ``tmsops up`` of ``state_dir`` and wait until it has stopped every part; its pid, or None."""
    pid = read_pid(state_dir / PID_FILE)
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGTERM)
        psutil.Process(pid).wait(timeout_s)
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass
    except PermissionError as error:
        raise StartUpFailed(f"not allowed to stop tmsops up (pid {pid}): run as its user") from error
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
def running(
    parts: list[Part], logs: Path, grace_s: float = STOP_GRACE_S, environ: Mapping[str, str] | None = None
) -> Iterator[list[Started]]:
    """Start ``parts`` in order (each in ``environ``, default this process's, plus its own ``env``),
    wait until they are healthy, and stop them all when the block ends or a signal comes."""
    started: list[Started] = []
    # Ctrl-C, SIGTERM and a closed terminal stop everything, even where SIGINT came in ignored
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    interrupts = Interrupts()
    previous = {signum: signal.signal(signum, interrupts.handle) for signum in stop_signals}
    serving = False
    try:
        for part in parts:
            if part.health_url is None:  # a client of the platform (the demo's story): once all is healthy
                _wait_all_healthy(started)
            with interrupts.held():  # a process started is recorded before a Ctrl-C can cut in
                started.append(_start(part, logs, os.environ if environ is None else environ))
            if part.wait:
                _wait_healthy(started[-1])
        _wait_all_healthy(started)
        serving = True
        yield started
    except KeyboardInterrupt:
        if not serving:
            raise StartUpFailed("interrupted during start-up: what had started is stopped") from None
    finally:
        # a second Ctrl-C must not cut the stop short: that is how processes are left behind
        for signum in stop_signals:
            signal.signal(signum, signal.SIG_IGN)
        try:
            if started:
                _say(f"stopping {len(started)} part(s), at most {grace_s:.0f} s each ...")
            for item in reversed(started):
                _stop(item, grace_s)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def wait_for_exit(started: list[Started]) -> None:
    """Block until a part exits (an error) or Ctrl-C."""
    while True:
        for item in started:
            if item.process.poll() is not None:
                raise StartUpFailed(f"{item.part.name} exited with code {item.process.returncode}:\n{_tail(item.log)}")
        time.sleep(POLL_S * 4)


def _start(part: Part, logs: Path, environ: Mapping[str, str]) -> Started:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{part.name.replace(' ', '-')}.log"
    _say(f"starting {part.name} ...")
    env = {**environ, **part.env}
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
        while True:  # at least one probe: a part waited for last may be past its deadline already
            if item.process.poll() is not None:
                raise StartUpFailed(f"{item.part.name} exited with code {item.process.returncode}:\n{_tail(item.log)}")
            with suppress(httpx.HTTPError):
                if client.get(item.part.health_url).status_code == 200:
                    return
            if time.monotonic() >= deadline:
                break
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


class Interrupts:
    """A stop signal raises KeyboardInterrupt where it lands, except inside :meth:`held`, which
    raises it at its end instead: a section that must finish (start a process and record it)."""

    def __init__(self) -> None:
        self._holding = False
        self._pending = False

    def handle(self, _signum: int, _frame: object) -> None:
        if self._holding:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextmanager
    def held(self) -> Iterator[None]:
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt
