"""A ``redis-server`` of the test's own on a free port, so tests may change its settings freely."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from support.net import free_port
from support.services import require_service
from tmsops.fleet.replica import die_with_parent

START_TIMEOUT_S = 10.0


@contextmanager
def redis_server(workdir: Path, *extra: str) -> Iterator[str]:
    """Start ``redis-server`` (with ``extra`` arguments) in ``workdir``; yields its URL; stops it after."""
    binary = shutil.which("redis-server")
    if binary is None:
        require_service("redis-server", "no `redis-server` binary on PATH (Debian package `redis-server`)")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)]
    args += ["--save", "", "--appendonly", "no"]
    with (workdir / "redis.log").open("ab") as log:
        process = subprocess.Popen(
            [*args, *extra], stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent(signal.SIGTERM)
        )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                client.ping()
                break
            except redis.AuthenticationError:  # up, with a password
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start: {(workdir / 'redis.log').read_text()[-2000:]}")
                time.sleep(0.02)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
