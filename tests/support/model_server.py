"""Start ``bentoml serve`` as a real process for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from support.net import free_port
from tmsops.fleet.replica import die_with_parent

REPO = Path(__file__).resolve().parents[2]
BENTOML = Path(sys.executable).parent / "bentoml"


def wait_ready(base: str, process: subprocess.Popen[bytes], timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {process.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"bentoml serve at {base} was not ready within {timeout_s:.0f} s")


def start(tracking_uri: str, port: int, log: Path, **settings: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TMSOPS_SERVING_TRACKING_URI": tracking_uri, "BENTOML_HOME": str(log.parent / "bentoml")}
    env.update({f"TMSOPS_SERVING_{key.upper()}": value for key, value in settings.items()})
    with log.open("ab") as sink:
        return subprocess.Popen(
            [str(BENTOML), "serve", "serving.service:ModelServer", "--port", str(port), "--host", "127.0.0.1"],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # The server (and with it its workers) gets SIGTERM if the test process dies.
            preexec_fn=die_with_parent(signal.SIGTERM),
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


@contextmanager
def model_server(tracking_uri: str, log: Path, port: int | None = None, **settings: str) -> Iterator[str]:
    """A ready model server on a free port; yields its base URL; stops it (and its workers) after."""
    port = port or free_port()
    process = start(tracking_uri, port, log, **settings)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process)
        yield base
    finally:
        stop(process)
