"""Fixtures that start real services (Prometheus and a process it scrapes) for integration tests."""

from __future__ import annotations

import ctypes
import functools
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from support.services import require_service

# Metrics served by the scraped process; test_prometheus_loader.py asserts these exact values.
EXPORTER_JOB = "tmsops_exporter"
QUEUE_DEPTH = 42.5
MEMORY_BYTES = {"cart": 2000.0, "checkout": 1000.0}

_EXPORTER_SOURCE = textwrap.dedent(
    f"""
    import sys, threading, time
    from wsgiref.simple_server import WSGIRequestHandler, make_server
    from prometheus_client import Counter, Gauge, make_wsgi_app

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    ticks = Counter("tmsops_test_ticks", "Ticks counted by the test exporter")
    Gauge("tmsops_test_queue_depth", "A constant gauge").set({QUEUE_DEPTH!r})
    memory = Gauge("tmsops_test_memory_bytes", "A constant gauge per service", ["service"])
    for service, value in {MEMORY_BYTES!r}.items():
        memory.labels(service=service).set(value)

    def tick():
        while True:
            ticks.inc(5)
            time.sleep(0.1)

    threading.Thread(target=tick, daemon=True).start()
    server = make_server("127.0.0.1", 0, make_wsgi_app(), handler_class=QuietHandler)
    print(server.server_port, flush=True)
    server.serve_forever()
    """
)

_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: {job}
    static_configs:
      - targets: ["{address}"]
"""

_STARTUP_DEADLINE_S = 30.0
# Enough history that a range ending a few seconds ago holds several points.
_SAMPLES_BEFORE_READY = 8


def _die_with_parent() -> Callable[[], object] | None:
    """A pre-exec hook that makes the child get SIGTERM when the test run dies.

    Looked up before the fork so the child only makes one system call; elsewhere
    than Linux the fixture teardown alone stops the children.
    """
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1
    return functools.partial(prctl, pr_set_pdeathsig, signal.SIGTERM)


def spawn(args: list[str], log: Path, *, capture_stdout: bool = False) -> subprocess.Popen[str]:
    with log.open("w") as log_file:
        return subprocess.Popen(
            args,
            stdout=subprocess.PIPE if capture_stdout else log_file,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            text=True,
            # Tests start these services from the main thread only.
            preexec_fn=_die_with_parent(),
        )


def stop_process(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    if process.stdout is not None:
        process.stdout.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"


def find_prometheus() -> str:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if found is None:
        require_service(
            "prometheus",
            "no `prometheus` binary on PATH (install the Debian package `prometheus`)",
        )
    return found


def _start_exporter(tmp: Path) -> tuple[subprocess.Popen[str], int]:
    script = tmp / "exporter.py"
    script.write_text(_EXPORTER_SOURCE)
    log = tmp / "exporter.log"
    process = spawn([sys.executable, str(script)], log, capture_stdout=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.isdigit():
        stop_process(process)
        pytest.fail(f"the test exporter did not start: {line!r}\n{tail(log)}", pytrace=False)
    return process, int(line)


def start_prometheus(
    binary: str, tmp: Path, target: int | str, job: str = EXPORTER_JOB
) -> tuple[subprocess.Popen[str], str]:
    """Prometheus scraping ``target`` (a port on 127.0.0.1, or host:port) every second; its base URL."""
    config = tmp / "prometheus.yml"
    address = f"127.0.0.1:{target}" if isinstance(target, int) else target
    config.write_text(_CONFIG.format(job=job, address=address))
    port = _free_port()
    args = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    return spawn(args, tmp / "prometheus.log"), f"http://127.0.0.1:{port}"


def _wait_until_scraped(process: subprocess.Popen[str], base_url: str, log: Path) -> None:
    """Wait for /-/ready and for a few scraped samples of the exporter's counter."""
    query = f'count_over_time(tmsops_test_ticks_total{{job="{EXPORTER_JOB}"}}[1m])'
    deadline = time.monotonic() + _STARTUP_DEADLINE_S
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(
                    f"prometheus exited with code {process.returncode}:\n{tail(log)}",
                    pytrace=False,
                )
            if sample_count(client, base_url, query) >= _SAMPLES_BEFORE_READY:
                return
            time.sleep(0.25)
    pytest.fail(f"prometheus did not scrape the exporter within {_STARTUP_DEADLINE_S} s:\n{tail(log)}")


def sample_count(client: httpx.Client, base_url: str, query: str) -> float:
    try:
        if client.get(f"{base_url}/-/ready").status_code != 200:
            return 0.0
        result = client.get(f"{base_url}/api/v1/query", params={"query": query}).json()["data"]["result"]
    except (httpx.HTTPError, ValueError, KeyError):
        return 0.0
    return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real Prometheus that scrapes a real process every second."""
    binary = find_prometheus()
    tmp = tmp_path_factory.mktemp("prometheus")
    exporter, exporter_port = _start_exporter(tmp)
    try:
        server, base_url = start_prometheus(binary, tmp, exporter_port)
        try:
            _wait_until_scraped(server, base_url, tmp / "prometheus.log")
            yield base_url
        finally:
            stop_process(server)
    finally:
        stop_process(exporter)


@pytest.fixture(scope="session")
def champion_registry(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real MLflow store (sqlite) with small trained champion models; its tracking URI."""
    from support.registry import register_champions

    return register_champions(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="session")
def model_server_url(champion_registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``bentoml serve`` as a real process on the champion registry; its base URL."""
    from support.model_server import model_server

    log = tmp_path_factory.mktemp("model-server") / "serve.log"
    with model_server(champion_registry, log, reload_token="test-token", reload_interval_s="1") as base:
        yield base
