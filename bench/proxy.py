"""The fleet proxy's cost and its faults: latency added at 200 requests/s, injected latency, TTL expiry.

Usage (from the repository root)::

    .venv/bin/python bench/proxy.py            # about 2 minutes on 2 cores
    .venv/bin/python bench/proxy.py --quick    # shorter phases, about 40 s

Starts ``python -m tmsops.fleet run`` as a real process with one service of one replica
(``tmsops.fleet.echo``, which does no work), then sends open-loop traffic at ``--rate``
requests/s alternately straight to the replica's port and through the service's proxy,
with a lean keep-alive HTTP/1.1 client (h11 over asyncio streams: httpx's own cost per
request, at tens of concurrent connections, would swamp a sub-millisecond figure), in
interleaved phases so that drift of the machine hits both paths alike.
``overhead_p50_ms`` is the proxy path's median latency minus the direct path's,
measured in the same run.

Then, through the proxy: a 100 ms ``network_latency`` fault is injected over the control
API and the added median latency is compared with 100 ms (``latency_fault_error_pct``);
and a ``service_unavailable`` fault with a 2 s time-to-live is injected and never
reverted: ``ttl_expiry_ok`` is true when requests fail while it lasts, all succeed after
it, and the fleet lists it as expired. Prints one JSON object; the fleet is stopped at
the end, also on errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h11
import httpx
import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tmsops.auth import TokenStore, service_token  # noqa: E402
from tmsops.state import make_engine  # noqa: E402

START_TIMEOUT_S = 60.0
FAULT_LATENCY_MS = 100.0
TTL_S = 2.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LeanClient:
    """GET over kept-alive HTTP/1.1 connections to one address; a new connection when none is idle."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection]] = []

    async def get(self, target: str) -> int:
        """The status of ``GET target``; once more on a new connection if a kept-alive one had gone stale."""
        if self._idle:
            reader, writer, conn = self._idle.pop()
            try:
                return await self._get(reader, writer, conn, target)
            except (ConnectionError, h11.RemoteProtocolError):
                writer.close()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return await self._get(reader, writer, h11.Connection(h11.CLIENT), target)

    async def _get(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: h11.Connection, target: str
    ) -> int:
        request = h11.Request(method="GET", target=target, headers=[("host", self.host)])
        writer.write((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
        status = await self._read(reader, conn)
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._idle.append((reader, writer, conn))
        else:
            writer.close()
        return status

    @staticmethod
    async def _read(reader: asyncio.StreamReader, conn: h11.Connection) -> int:
        status = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                return status
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("closed before the end of the answer")

    def close(self) -> None:
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()


def progress(message: str) -> None:
    print(f"[bench/proxy] {message}", file=sys.stderr, flush=True)


def start_fleet(workdir: Path, service_port: int, control_port: int) -> subprocess.Popen[bytes]:
    config = {
        "stateDir": str(workdir / "state"),
        "fleet": {
            "controlPort": control_port,
            "services": {"echo": {"command": ["{python}", "-m", "tmsops.fleet.echo"], "port": service_port}},
        },
    }
    path = workdir / "tmsops.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (workdir / "fleet.log").open("wb")
    command = [sys.executable, "-m", "tmsops.fleet", "run", "--config", str(path)]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir)


def stop_fleet(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def wait_ready(control: httpx.AsyncClient, process: subprocess.Popen[bytes], log: Path) -> str:
    """The replica's address once the fleet answers and the replica is ready."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the fleet exited with code {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            status = (await control.get("/services/echo")).json()
            if status["readyReplicas"] == 1:
                return str(status["pods"][0]["address"])
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        await asyncio.sleep(0.2)
    raise SystemExit(f"the fleet was not ready within {START_TIMEOUT_S} s:\n{log.read_text()[-2000:]}")


async def open_loop(client: LeanClient, target: str, rate: float, duration_s: float) -> dict[str, Any]:
    """Requests at a fixed rate whatever the answers take; latency of each, and errors."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    async def one() -> None:
        started = time.perf_counter()
        try:
            status = await client.get(target)
        except (OSError, h11.ProtocolError) as error:
            errors[type(error).__name__] += 1
            return
        if status == 200:
            latencies.append((time.perf_counter() - started) * 1000)
        else:
            errors[str(status)] += 1

    tasks = []
    begin = time.perf_counter()
    for index in range(int(rate * duration_s)):
        delay = begin + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    wall_s = time.perf_counter() - begin
    values = np.array(latencies) if latencies else np.array([float("nan")])
    return {
        "requests": len(tasks),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "achieved_rps": round(len(tasks) / wall_s, 1),
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p95_ms": round(float(np.percentile(values, 95)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
        "latencies": latencies,
    }


def merged(phases: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [value for phase in phases for value in phase["latencies"]]
    values = np.array(latencies) if latencies else np.array([float("nan")])
    return {
        "requests": sum(phase["requests"] for phase in phases),
        "errors": sum(phase["errors"] for phase in phases),
        "error_kinds": dict(sum((Counter(phase["error_kinds"]) for phase in phases), Counter())),
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p95_ms": round(float(np.percentile(values, 95)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
        "phase_p50_ms": [phase["p50_ms"] for phase in phases],
    }


async def ttl_check(client: LeanClient, control: httpx.AsyncClient) -> dict[str, Any]:
    fault = {"service": "echo", "fault": {"type": "service_unavailable"}, "ttlS": TTL_S}
    answer = await control.post("/faults", json=fault)
    answer.raise_for_status()
    fault_id = answer.json()["id"]
    during = [await client.get("/echo") for _ in range(5)]
    await asyncio.sleep(TTL_S + 0.6)
    after = [await client.get("/echo") for _ in range(20)]
    await asyncio.sleep(1.5)  # the reaper runs at least every 0.5 s while a fault is active
    state = (await control.get(f"/faults/{fault_id}")).json()["state"]
    ok = all(code == 503 for code in during) and all(code == 200 for code in after) and state == "expired"
    return {"during_codes": sorted(set(during)), "after_codes": sorted(set(after)), "listed_state": state, "ok": ok}


async def measure(options: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    service_port, control_port = free_port(), free_port()
    fleet = start_fleet(workdir, service_port, control_port)
    try:
        return await _measure(options, workdir, fleet, service_port, control_port)
    finally:
        stop_fleet(fleet)


async def _measure(
    options: argparse.Namespace, workdir: Path, fleet: subprocess.Popen[bytes], service_port: int, control_port: int
) -> dict[str, Any]:
    control_url = f"http://127.0.0.1:{control_port}"
    async with httpx.AsyncClient(base_url=control_url, timeout=30) as probe:
        replica = await wait_ready(probe, fleet, workdir / "fleet.log")
    engine = make_engine(f"sqlite:///{workdir / 'state' / 'tmsops.db'}")
    token = service_token(TokenStore(engine), "bench")
    engine.dispose()
    headers = {"Authorization": f"Bearer {token}"}
    direct_client, proxy_client = LeanClient(replica), LeanClient(f"127.0.0.1:{service_port}")
    async with httpx.AsyncClient(base_url=control_url, headers=headers, timeout=30) as control:
        progress("warming up")
        await open_loop(direct_client, "/echo", options.rate, 2)
        await open_loop(proxy_client, "/echo", options.rate, 2)
        direct, proxied = [], []
        for round_index in range(options.rounds):
            progress(f"round {round_index + 1}/{options.rounds}: direct, then through the proxy")
            direct.append(await open_loop(direct_client, "/echo", options.rate, options.phase_s))
            proxied.append(await open_loop(proxy_client, "/echo", options.rate, options.phase_s))
        progress(f"injected latency of {FAULT_LATENCY_MS:.0f} ms")
        fault = {"service": "echo", "fault": {"type": "network_latency", "latencyMs": FAULT_LATENCY_MS}, "ttlS": 120}
        answer = await control.post("/faults", json=fault)
        answer.raise_for_status()
        faulted = await open_loop(proxy_client, "/echo", options.rate, options.phase_s)
        (await control.delete(f"/faults/{answer.json()['id']}")).raise_for_status()
        after_revert = await open_loop(proxy_client, "/echo", options.rate, options.phase_s)
        progress("fault with a 2 s time-to-live, never reverted")
        ttl = await ttl_check(proxy_client, control)
    direct_client.close()
    proxy_client.close()
    return report(options, direct, proxied, faulted, after_revert, ttl)


def report(
    options: argparse.Namespace,
    direct: list[dict[str, Any]],
    proxied: list[dict[str, Any]],
    faulted: dict[str, Any],
    after_revert: dict[str, Any],
    ttl: dict[str, Any],
) -> dict[str, Any]:
    direct_all, proxied_all = merged(direct), merged(proxied)
    faulted.pop("latencies")
    after_revert.pop("latencies")
    overhead = proxied_all["p50_ms"] - direct_all["p50_ms"]
    added = faulted["p50_ms"] - proxied_all["p50_ms"]
    error_pct = abs(added - FAULT_LATENCY_MS) / FAULT_LATENCY_MS * 100
    return {
        "bench": "proxy",
        "settings": {"rate_rps": options.rate, "phase_s": options.phase_s, "rounds": options.rounds},
        "direct": direct_all,
        "proxy": proxied_all,
        "latency_fault": {"injected_ms": FAULT_LATENCY_MS, "added_p50_ms": round(added, 3), **faulted},
        "after_revert": after_revert,
        "ttl_expiry": ttl,
        "summary": {
            "overhead_p50_ms": round(overhead, 3),
            "overhead_p99_ms": round(proxied_all["p99_ms"] - direct_all["p99_ms"], 3),
            "latency_fault_error_pct": round(error_pct, 2),
            "ttl_expiry_ok": ttl["ok"],
            "errors_total": direct_all["errors"] + proxied_all["errors"] + faulted["errors"] + after_revert["errors"],
            "goal_overhead_p50_at_most_1ms": overhead <= 1.0,
            "goal_latency_within_10pct": error_pct <= 10.0,
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second (default 200)")
    parser.add_argument("--phase-s", type=float, default=10.0, help="seconds per phase (default 10)")
    parser.add_argument("--rounds", type=int, default=4, help="direct/proxy rounds (default 4)")
    parser.add_argument("--quick", action="store_true", help="3 s phases, 2 rounds")
    options = parser.parse_args(argv)
    if options.quick:
        options.phase_s, options.rounds = 3.0, 2
    machine = {"cpu_count": os.cpu_count(), "python": platform.python_version(), "load_avg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="tmsops-bench-proxy-") as tmp:
        result = asyncio.run(measure(options, Path(tmp)))
    machine["load_avg_end"] = os.getloadavg()
    print(json.dumps({**result, "machine": machine}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
