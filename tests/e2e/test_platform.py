"""``tmsops up --demo``, as ``make run`` starts it, from outside: the way a new user meets it.

One real run of the whole platform (the MLflow UI, the model server on a small champion, the
local fleet, the autoscaler, the optimizer, chaos, and the demo's story with its events moved
earlier), in a state directory of its own, on the demo's fixed ports. It must print every URL,
be healthy for ``tmsops status``, play its story (the chaos experiment ends with its fault
rolled back; the missing index on the shipments is found and kept), and after Ctrl-C (SIGINT)
leave no process, no listening port and no fault behind.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
from support.registry import register_champions
from support.services import require_service

pytestmark = pytest.mark.xdist_group("platform")

PORTS = {"mlflow ui": 5000, "model server": 3000, "fleet": 8010, "autoscaler": 8011, "optimizer": 8012, "chaos": 8013}
DEMO_PORTS = (8080, 8081, 8082)
UP_DEADLINE_S = 420.0
STORY_DEADLINE_S = 300.0
STOP_DEADLINE_S = 120.0


class Output:
    """The lines a process prints, collected on a thread; wait for one that matches."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._process = process
        assert process.stdout is not None
        stream = process.stdout
        threading.Thread(target=lambda: self.lines.extend(stream), daemon=True).start()

    def wait_for(self, pattern: str, deadline_s: float) -> re.Match[str]:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            assert self._process.poll() is None, f"tmsops up exited early:\n{self.text()}"
            time.sleep(0.5)
        pytest.fail(f"no line matching {pattern!r} within {deadline_s:.0f} s:\n{self.text()}")

    def text(self) -> str:
        return "".join(self.lines[-80:])


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def demo_environment(tmp_path: Path) -> Iterator[dict[str, str]]:
    busy = [port for port in (*PORTS.values(), *DEMO_PORTS) if listening(port)]
    if busy:
        require_service("the platform's ports", f"ports {busy} are in use (is `make run` running?)")
    try:
        psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3).close()
    except psycopg.OperationalError as error:
        require_service("PostgreSQL", str(error))
    uri = register_champions(tmp_path / "registry")
    # this shell's overrides would change what the demo does (the demo leaves them out too)
    inherited = {name: value for name, value in os.environ.items() if not name.startswith(("TMSOPS_", "OTEL_"))}
    yield {
        **inherited,
        "TMSOPS_STATE_DIR": str(tmp_path / "state"),
        "MLFLOW_TRACKING_URI": uri,
        "TMSOPS_SERVING_TRACKING_URI": uri,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "TMSOPS_DEMO_CHAOS_AT_S": "5",
        "TMSOPS_DEMO_FAULT_S": "15",
        "TMSOPS_DEMO_OPTIMIZER_AT_S": "60",
    }


def tmsops_command() -> str:
    found = shutil.which("tmsops", path=str(Path(sys.executable).parent))
    assert found, "the tmsops console script is not installed beside this Python"
    return found


def test_the_demo_platform_plays_its_story_and_stops_clean(demo_environment: dict[str, str], tmp_path: Path) -> None:
    tmsops = tmsops_command()
    up = subprocess.Popen(
        [tmsops, "up", "--demo"],
        cwd=tmp_path,
        env=demo_environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(up)
    tree: set[psutil.Process] = set()
    try:
        output.wait_for(r"tmsops is up \(\d+ s\)", UP_DEADLINE_S)
        for name, port in PORTS.items():
            url = output.wait_for(rf"{name} +(http://127\.0\.0\.1:{port}\S*)", 1).group(1)
            assert httpx.get(url, timeout=30).status_code == 200, url  # every printed address opens
        output.wait_for(r"admin token \(shown once, keep it\): tmsops_", 1)

        status = subprocess.run(
            [tmsops, "status"], cwd=tmp_path, env=demo_environment, capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count(" healthy ") == len(PORTS), status.stdout

        output.wait_for(r"demo: chaos: experiment \S+ completed .*; 1 of 1 fault\(s\) rolled back", STORY_DEADLINE_S)
        output.wait_for(r'demo: optimizer: missing index found: .*"shipments".*\("customer_id"', STORY_DEADLINE_S)
        output.wait_for(r"demo: optimizer: tmsops_shipments_customer_id\S*: kept", STORY_DEADLINE_S)
        faults = httpx.get(f"http://127.0.0.1:{PORTS['fleet']}/faults", timeout=10).json()
        assert [fault for fault in faults if fault["state"] == "active"] == []

        tree = {up_process := psutil.Process(up.pid), *up_process.children(recursive=True)}
        assert len(tree) > len(PORTS) + 3  # the parts, the fleet's replicas, MLflow's and BentoML's workers
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            up.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            for process in psutil.Process(up.pid).children(recursive=True):
                process.kill()
            up.kill()
            pytest.fail(f"tmsops up did not stop within {STOP_DEADLINE_S:.0f} s:\n{output.text()}")

    assert up.returncode == 0, output.text()
    left = [process for process in tree if process.is_running() and process.status() != psutil.STATUS_ZOMBIE]
    assert left == [], [process.cmdline() for process in left]
    assert [port for port in (*PORTS.values(), *DEMO_PORTS) if listening(port)] == []
    assert not (tmp_path / "state" / "up.pid").exists()
