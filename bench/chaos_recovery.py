"""How fast the chaos service takes a fault away, and how exact the latency it injects is.

Usage (from the repository root)::

    .venv/bin/python bench/chaos_recovery.py            # about 30 s on 2 cores
    .venv/bin/python bench/chaos_recovery.py --runs 10

Serves, in this process and over real HTTP, the fleet's control API (three echo services of
one replica each, real processes) and the chaos service acting on it through the control API,
as in production. Then:

- ``rollback_s``: experiments with a 300 ms ``network_latency`` fault and an HTTP probe that
  allows 150 ms, probed every 100 ms with a failure threshold of 1. Measured from the end of
  the failing probe (its journal time) to the confirmed rollback (the journal's ``revertedAt``,
  written once the fleet answered the fault as reverted). Beside it, in the same run: a fault
  reverted straight through the fleet's API (``DELETE /faults/{id}``), the floor any tool pays.
- ``emergency_stop_s``: one experiment per service (three faults), then ``POST
  /safety/emergency-stop``; from sending the request until the fleet lists no active fault
  (polled every 5 ms in process). Beside it: the same three faults reverted one after the other
  straight through the fleet's API.
- ``latency_error_pct``: a 200 ms latency fault injected by an experiment; the median latency
  of sequential requests during the fault minus the median before, against 200 ms. Beside it:
  the same fault injected straight through the fleet's API.

``summary`` holds the worst run of each (and the goals: rollback at most 2 s, emergency stop at
most 1 s). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from chaos.service import build_app as chaos_app  # noqa: E402
from tmsops.auth import Scope, service_token  # noqa: E402
from tmsops.fleet.api import build_app as fleet_app  # noqa: E402
from tmsops.fleet.supervisor import Fleet  # noqa: E402
from tmsops.settings import ChaosSettings, FleetConfig, FleetService, FleetSettings  # noqa: E402
from tmsops.targets.model import FaultState  # noqa: E402

SERVICES = ("echo-a", "echo-b", "echo-c")
INJECTED_MS = 200.0
ROLLBACK_LATENCY_MS = 300.0
PROBE_LIMIT_MS = 150.0
SAMPLES = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def progress(message: str) -> None:
    print(f"[chaos_recovery] {message}", file=sys.stderr, flush=True)


@dataclass
class Bench:
    fleet: Fleet
    fleet_api: httpx.AsyncClient
    chaos: httpx.AsyncClient
    operator: dict[str, str]
    admin: dict[str, str]

    def url(self, service: str, path: str = "/echo") -> str:
        return f"http://127.0.0.1:{self.fleet.config.services[service].port}{path}"

    async def active(self) -> int:
        return sum(fault.state is FaultState.ACTIVE for fault in await self.fleet.faults())

    async def start(self, body: dict[str, Any]) -> str:
        created = await self.chaos.post("/experiments", json=body, headers=self.operator)
        created.raise_for_status()
        experiment_id = str(created.json()["id"])
        (await self.chaos.post(f"/experiments/{experiment_id}/start", headers=self.operator)).raise_for_status()
        return experiment_id

    async def finished(self, experiment_id: str) -> dict[str, Any]:
        while True:
            detail: dict[str, Any] = (await self.chaos.get(f"/experiments/{experiment_id}")).json()
            if detail["experiment"]["status"] not in ("created", "running"):
                return detail
            await asyncio.sleep(0.05)

    async def until_injected(self, count: int) -> None:
        while await self.active() < count:
            await asyncio.sleep(0.01)


async def serve(app: Any, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    return server, task


@asynccontextmanager
async def running(workdir: Path) -> AsyncIterator[Bench]:
    echo = ["{python}", "-m", "tmsops.fleet.echo"]
    services = {name: FleetService(command=echo, port=free_port(), stop_grace=5) for name in SERVICES}
    config = FleetConfig(control_port=free_port(), services=services, usage_interval=0.5)
    admin_token = secrets.token_urlsafe(32)  # configured, so that no first-start token is printed on stdout
    fleet_settings = FleetSettings(state_dir=workdir, fleet=config, log_level="WARNING", admin_token=admin_token)
    fleet_application = fleet_app(fleet_settings)
    fleet_server, fleet_task = await serve(fleet_application, config.control_port)
    fleet_url = f"http://127.0.0.1:{config.control_port}"
    settings = ChaosSettings(
        state_dir=workdir,
        log_level="WARNING",
        admin_token=admin_token,
        model_server_url=f"http://127.0.0.1:{free_port()}",
        target={"fleet": {"url": fleet_url}},
        safety={"blastRadiusLimit": 100},
    )
    app = chaos_app(settings)
    chaos_port = free_port()
    chaos_server, chaos_task = await serve(app, chaos_port)
    tokens = app.state.tokens
    operator = {"Authorization": f"Bearer {service_token(tokens, 'bench')}"}
    admin = {"Authorization": f"Bearer {service_token(tokens, 'bench-admin', Scope.ADMIN)}"}
    try:
        async with (
            httpx.AsyncClient(base_url=fleet_url, headers=operator, timeout=30) as fleet_api,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{chaos_port}", timeout=30) as chaos,
        ):
            yield Bench(fleet_application.state.fleet, fleet_api, chaos, operator, admin)
    finally:
        chaos_server.should_exit = True
        await chaos_task
        fleet_server.should_exit = True
        await fleet_task


def latency_experiment(service: str, latency_ms: float, **extra: Any) -> dict[str, Any]:
    return {
        "name": f"bench {service}",
        "target": {"service": service, "mode": "all"},
        "faultType": "network_latency",
        "parameters": {"latencyMs": latency_ms},
        "duration": "60s",
        **extra,
    }


# rollback_s


async def one_rollback(bench: Bench) -> dict[str, float]:
    probe = {"type": "http", "name": "fast", "url": bench.url("echo-a"), "maxLatencyMs": PROBE_LIMIT_MS}
    body = latency_experiment(
        "echo-a",
        ROLLBACK_LATENCY_MS,
        steadyState={"probes": [probe]},
        probeInterval="0.1s",
        failureThreshold=1,
    )
    detail = await bench.finished(await bench.start(body))
    failing = next(item for item in detail["probes"] if item["phase"] == "during" and not item["ok"])
    injection = detail["injections"][0]
    failed_at, injected_at = _time(failing["at"]), _time(injection["injectedAt"])
    return {
        "rollback_s": (_time(injection["revertedAt"]) - failed_at).total_seconds(),
        "detection_s": (failed_at - injected_at).total_seconds(),
    }


async def direct_revert(bench: Bench) -> float:
    body = {"service": "echo-a", "fault": {"type": "network_latency", "latencyMs": ROLLBACK_LATENCY_MS}, "ttlS": 60}
    fault = (await bench.fleet_api.post("/faults", json=body)).json()
    started = time.perf_counter()
    (await bench.fleet_api.delete(f"/faults/{fault['id']}")).raise_for_status()
    return time.perf_counter() - started


async def measure_rollback(bench: Bench, runs: int) -> dict[str, Any]:
    results = [await one_rollback(bench) for _ in range(runs)]
    direct = [await direct_revert(bench) for _ in range(runs)]
    rollback = [item["rollback_s"] for item in results]
    return {
        "runs_s": [round(value, 4) for value in rollback],
        "median_s": round(statistics.median(rollback), 4),
        "max_s": round(max(rollback), 4),
        "detection_median_s": round(statistics.median(item["detection_s"] for item in results), 4),
        "direct_fleet_revert_median_s": round(statistics.median(direct), 4),
    }


# emergency_stop_s


async def one_emergency_stop(bench: Bench) -> dict[str, float]:
    for service in SERVICES:
        await bench.start(latency_experiment(service, 50))
    await bench.until_injected(len(SERVICES))
    started = time.perf_counter()
    request = asyncio.create_task(
        bench.chaos.post("/safety/emergency-stop", json={"reason": "bench"}, headers=bench.operator)
    )
    while await bench.active():
        await asyncio.sleep(0.005)
    gone = time.perf_counter() - started
    answer = await request
    answered = time.perf_counter() - started
    assert answer.json()["confirmed"], answer.text
    (await bench.chaos.post("/safety/rearm", headers=bench.admin)).raise_for_status()
    while (await bench.chaos.get("/safety/status")).json()["running"]:
        await asyncio.sleep(0.05)
    return {"all_faults_gone_s": gone, "answered_s": answered}


async def sequential_reverts(bench: Bench) -> float:
    ids = []
    for service in SERVICES:
        body = {"service": service, "fault": {"type": "network_latency", "latencyMs": 50}, "ttlS": 60}
        ids.append((await bench.fleet_api.post("/faults", json=body)).json()["id"])
    started = time.perf_counter()
    for fault_id in ids:
        (await bench.fleet_api.delete(f"/faults/{fault_id}")).raise_for_status()
    return time.perf_counter() - started


async def measure_emergency_stop(bench: Bench, runs: int) -> dict[str, Any]:
    results = [await one_emergency_stop(bench) for _ in range(runs)]
    baseline = [await sequential_reverts(bench) for _ in range(runs)]
    gone = [item["all_faults_gone_s"] for item in results]
    return {
        "faults_per_stop": len(SERVICES),
        "runs_s": [round(value, 4) for value in gone],
        "median_s": round(statistics.median(gone), 4),
        "max_s": round(max(gone), 4),
        "answered_median_s": round(statistics.median(item["answered_s"] for item in results), 4),
        "sequential_fleet_reverts_median_s": round(statistics.median(baseline), 4),
    }


# latency_error_pct


async def median_ms(client: httpx.AsyncClient, url: str) -> float:
    latencies = []
    for _ in range(SAMPLES):
        started = time.perf_counter()
        (await client.get(url)).raise_for_status()
        latencies.append((time.perf_counter() - started) * 1000)
    return statistics.median(latencies)


async def measure_latency(bench: Bench) -> dict[str, Any]:
    url = bench.url("echo-b")
    async with httpx.AsyncClient(timeout=10) as client:
        before = await median_ms(client, url)
        experiment_id = await bench.start(latency_experiment("echo-b", INJECTED_MS))
        await bench.until_injected(1)
        during = await median_ms(client, url)
        await bench.chaos.post(f"/experiments/{experiment_id}/stop", headers=bench.operator)
        body = {"service": "echo-b", "fault": {"type": "network_latency", "latencyMs": INJECTED_MS}, "ttlS": 60}
        fault = (await bench.fleet_api.post("/faults", json=body)).json()
        direct = await median_ms(client, url)
        await bench.fleet_api.delete(f"/faults/{fault['id']}")
        after = await median_ms(client, url)
    added, direct_added = during - before, direct - before
    return {
        "requested_ms": INJECTED_MS,
        "samples": SAMPLES,
        "before_median_ms": round(before, 3),
        "during_median_ms": round(during, 3),
        "added_ms": round(added, 3),
        "error_pct": round(abs(added - INJECTED_MS) / INJECTED_MS * 100, 3),
        "direct_fleet_fault_added_ms": round(direct_added, 3),
        "direct_fleet_fault_error_pct": round(abs(direct_added - INJECTED_MS) / INJECTED_MS * 100, 3),
        "after_rollback_median_ms": round(after, 3),
    }


async def measure(runs: int, workdir: Path) -> dict[str, Any]:
    async with running(workdir) as bench:
        progress("rollback after a failing probe")
        rollback = await measure_rollback(bench, runs)
        progress("emergency stop")
        emergency = await measure_emergency_stop(bench, max(1, runs // 2))
        progress("injected latency")
        latency = await measure_latency(bench)
        left = await bench.active()
    return {
        "bench": "chaos_recovery",
        "settings": {"runs": runs, "services": len(SERVICES), "probe_interval_s": 0.1, "failure_threshold": 1},
        "rollback": rollback,
        "emergency_stop": emergency,
        "latency": latency,
        "summary": {
            "rollback_s": rollback["max_s"],
            "rollback_median_s": rollback["median_s"],
            "emergency_stop_s": emergency["max_s"],
            "emergency_stop_median_s": emergency["median_s"],
            "latency_error_pct": latency["error_pct"],
            "faults_left_active": left,
            "goal_rollback_at_most_2s": rollback["max_s"] <= 2.0,
            "goal_emergency_stop_at_most_1s": emergency["max_s"] <= 1.0,
        },
    }


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="rollback runs (emergency stops: half as many)")
    options = parser.parse_args(argv)
    machine = {"cpu_count": os.cpu_count(), "python": platform.python_version(), "load_avg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="tmsops-bench-chaos-") as tmp:
        result = asyncio.run(measure(options.runs, Path(tmp)))
    machine["load_avg_end"] = os.getloadavg()
    print(json.dumps({**result, "machine": machine}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
