"""The demo's story, played against the running platform: ``python -m tmsops.demo.scenario``.

``tmsops up --demo`` starts it last, once every service is healthy. It

1. replays a day of TMS traffic (:mod:`tmsops.demo.traffic`) against the api-gateway,
   compressed :data:`~tmsops.demo.platform.COMPRESS` times (a day in about ten minutes), day
   after day until stopped, so the autoscaler has something to scale for;
2. after :data:`CHAOS_AT_S`, runs a sample chaos experiment (latency on one tracking-service
   replica for a minute, with the gateway's answers as its steady state) and reports how it
   ended and that its fault was rolled back;
3. after :data:`OPTIMIZER_AT_S`, asks the optimizer for its index advice on the shipment
   database, and lets it apply what it found: each index is measured and kept only if the
   queries got faster.

It speaks through the services' HTTP APIs only, with the token in ``TMSOPS_DEMO_TOKEN``
(scope operate), and prints one line per event. Stopping it (SIGTERM, Ctrl-C) stops the
traffic; a running experiment is the chaos service's to roll back.

``TMSOPS_DEMO_CHAOS_AT_S``, ``TMSOPS_DEMO_OPTIMIZER_AT_S`` and ``TMSOPS_DEMO_FAULT_S`` move the
two events and set the fault's duration (the platform test plays the story faster).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx

from tmsops.demo.platform import COMPRESS, SHIPMENT_ROWS
from tmsops.demo.traffic import day_trace
from tmsops.loadgen import ReplayOptions, rate_schedule, replay
from tmsops.settings import FleetSettings, load_settings

PEAK_RPS = 40.0
CHAOS_AT_S = 90.0
OPTIMIZER_AT_S = 180.0
FAULT_S = 60.0
EXPERIMENT_POLL_S = 2.0

SAMPLE_EXPERIMENT: dict[str, Any] = {
    "name": "demo: tracking-service latency",
    "target": {"service": "tracking-service", "mode": "one"},
    "faultType": "network_latency",
    "parameters": {"latencyMs": 150, "jitterMs": 30},
    "steadyState": {
        "probes": [
            {
                "type": "http",
                "name": "gateway answers within 2 s",
                "url": "http://127.0.0.1:8080/api/shipments/1",
                "maxLatencyMs": 2000,
            }
        ]
    },
    "probeInterval": "5s",
    "failureThreshold": 3,
}


def say(line: str) -> None:
    print(f"demo: {line}", flush=True)


class Platform:
    """The services' URLs, and an HTTP client that carries the demo's token."""

    def __init__(self, settings: FleetSettings, token: str, timing: Timing) -> None:
        self.timing = timing
        host = settings.host
        self.gateway = f"http://{host}:{settings.fleet.services['api-gateway'].port}"
        self.chaos = f"http://{host}:{settings.ports.chaos}"
        self.optimizer = f"http://{host}:{settings.ports.optimizer}"
        self.client = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=600.0)

    async def call(self, method: str, url: str, **options: Any) -> Any:
        response = await self.client.request(method, url, **options)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {url} answered {response.status_code}: {response.text[:500]}")
        return response.json()


async def traffic(platform: Platform) -> None:
    """A day of traffic after another, until cancelled; one summary line per day."""
    schedule = rate_schedule(day_trace(), compress=COMPRESS, peak_rps=PEAK_RPS)
    options = ReplayOptions(max_id=SHIPMENT_ROWS, connections=32, timeout_s=10.0, progress_every_s=60.0)
    day = 1
    while True:
        say(f"day {day}: replaying a day of traffic in {schedule.duration_s / 60:.1f} min (peak {PEAK_RPS:g} req/s)")
        report = await replay(schedule, platform.gateway, options, trace="demo day")
        if report.interrupted:  # replay absorbs the cancellation to report what it did: pass it on
            raise asyncio.CancelledError
        say(
            f"day {day} done: {report.requests} requests, {report.error_pct:.2f}% errors,"
            f" p95 {report.latency_p95_ms or 0:.0f} ms"
        )
        day += 1


async def chaos_experiment(platform: Platform) -> None:
    """Create, start and follow the sample experiment to its end, then show its rollback."""
    experiment = {**SAMPLE_EXPERIMENT, "duration": f"{platform.timing.fault_s:g}s"}
    created = await platform.call("POST", f"{platform.chaos}/experiments", json=experiment)
    experiment_id = created["id"]
    say(f"chaos: starting experiment {experiment_id} ({experiment['name']}, {experiment['duration']})")
    await platform.call("POST", f"{platform.chaos}/experiments/{experiment_id}/start", json={"dryRun": False})
    while True:
        detail = await platform.call("GET", f"{platform.chaos}/experiments/{experiment_id}")
        if detail["experiment"]["status"] not in ("created", "running"):
            break
        await asyncio.sleep(EXPERIMENT_POLL_S)
    injections = detail.get("injections", [])
    reverted = sum(1 for injection in injections if injection.get("state") == "reverted")
    say(
        f"chaos: experiment {experiment_id} {detail['experiment']['status']}"
        f" ({detail['experiment'].get('reason') or 'steady state held'});"
        f" {reverted} of {len(injections)} fault(s) rolled back"
    )


async def optimize_database(platform: Platform) -> None:
    """Show the index advice, then let the optimizer apply and measure it."""
    recommendations = await platform.call("GET", f"{platform.optimizer}/recommendations")
    advice = recommendations.get("database")
    if not advice:
        problem = recommendations.get("unavailable", {}).get("database", "no database configured")
        say(f"optimizer: no index advice: {problem}")
        return
    for recommendation in advice.get("recommendations", []):
        say(
            f"optimizer: missing index found: {recommendation['definition']}"
            f" (estimated {recommendation['estimated_saving_pct']:.0f}% less read cost)"
        )
    if not advice.get("recommendations"):
        say("optimizer: no index to recommend yet")
        return
    outcome = await platform.call(
        "POST", f"{platform.optimizer}/auto-optimize", json={"service": "shipment-service", "scope": "database"}
    )
    for change in outcome["applied"]:
        say(f"optimizer: {change['subject']}: {change['status']} ({change.get('reason') or ''})")


async def story(platform: Platform) -> None:
    started = time.monotonic()
    replaying = asyncio.create_task(traffic(platform))
    try:
        timing = platform.timing
        for at, step in ((timing.chaos_at_s, chaos_experiment), (timing.optimizer_at_s, optimize_database)):
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            try:
                await step(platform)
            except (httpx.HTTPError, RuntimeError, KeyError) as error:
                say(f"{step.__name__.replace('_', ' ')} did not complete: {error}")
        await replaying
    finally:
        replaying.cancel()
        await asyncio.gather(replaying, return_exceptions=True)
        await platform.client.aclose()


@dataclass(frozen=True)
class Timing:
    chaos_at_s: float = CHAOS_AT_S
    optimizer_at_s: float = OPTIMIZER_AT_S
    fault_s: float = FAULT_S

    @classmethod
    def from_env(cls) -> Timing:
        def seconds(name: str, default: float) -> float:
            text = os.environ.get(name, "")
            try:
                value = float(text) if text else default
            except ValueError:
                raise SystemExit(f"error: {name} must be a number of seconds, not {text!r}") from None
            if not value > 0:
                raise SystemExit(f"error: {name} must be above 0, not {text!r}")
            return value

        return cls(
            seconds("TMSOPS_DEMO_CHAOS_AT_S", CHAOS_AT_S),
            seconds("TMSOPS_DEMO_OPTIMIZER_AT_S", OPTIMIZER_AT_S),
            seconds("TMSOPS_DEMO_FAULT_S", FAULT_S),
        )


def main() -> None:
    token = os.environ.get("TMSOPS_DEMO_TOKEN")
    if not token:
        print("error: TMSOPS_DEMO_TOKEN (a token with scope operate) is not set", file=sys.stderr)
        sys.exit(2)
    platform = Platform(load_settings(FleetSettings), token, Timing.from_env())

    async def until_stopped() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            await story(platform)
        except asyncio.CancelledError:
            say("stopped")

    asyncio.run(until_stopped())


if __name__ == "__main__":
    main()
