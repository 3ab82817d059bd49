"""The demo TMS workload on the local fleet: scaling 1 -> 4 -> 1 under steady load fails no request."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from support.net import free_port

from tmsops.fleet.supervisor import Fleet
from tmsops.settings import FleetConfig, demo_fleet

pytestmark = [pytest.mark.anyio, pytest.mark.xdist_group("fleet")]
RATE_RPS = 40


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Fleet]:
    services = {
        name: service.model_copy(
            update={"port": free_port(), "data_dir": tmp_path / name if service.data_dir else None}
        )
        for name, service in demo_fleet().items()
    }
    fleet = Fleet(FleetConfig(control_port=free_port(), services=services), state_dir=tmp_path)
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


class SteadyLoad:
    """Open-loop GETs through the gateway at a fixed rate; every outcome counted."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.outcomes: Counter[str] = Counter()
        self._stop = asyncio.Event()

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as client:
            tasks = []
            index = 0
            begin = time.perf_counter()
            while not self._stop.is_set():
                tasks.append(asyncio.create_task(self._one(client, index)))
                index += 1
                await asyncio.sleep(max(0.0, begin + index / RATE_RPS - time.perf_counter()))
            await asyncio.gather(*tasks)

    async def _one(self, client: httpx.AsyncClient, index: int) -> None:
        try:
            response = await client.get(f"/api/shipments/{1 + index % 500}")
            self.outcomes[str(response.status_code)] += 1
        except httpx.HTTPError as error:
            self.outcomes[type(error).__name__] += 1

    def stop(self) -> None:
        self._stop.set()


async def test_scaling_one_to_four_to_one_under_load_fails_no_request(demo: Fleet) -> None:
    load = SteadyLoad(f"http://127.0.0.1:{demo.config.services['api-gateway'].port}")
    running = asyncio.create_task(load.run())
    await asyncio.sleep(2)
    for name in ("api-gateway", "shipment-service"):
        up = await demo.set_replicas(name, 4)
        assert (up.replicas, up.ready_replicas) == (4, 4)
    await asyncio.sleep(3)
    before_down = sum(load.outcomes.values())
    for name in ("api-gateway", "shipment-service"):
        down = await demo.set_replicas(name, 1)
        assert (down.replicas, down.ready_replicas) == (1, 1)
    await asyncio.sleep(2)
    load.stop()
    await running
    assert sum(load.outcomes.values()) > before_down > RATE_RPS
    assert load.outcomes == Counter({"200": sum(load.outcomes.values())})
