"""ModelClient against a real ``bentoml serve`` on small champion models (context 48, horizon 6)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx
import pytest
from support.model_server import free_port, start, stop, wait_ready

from tmsops.model_client import (
    CircuitOpenError,
    ModelClient,
    ModelRequestError,
    ModelServerUnavailable,
    SeriesIn,
)

pytestmark = [pytest.mark.xdist_group("model-server"), pytest.mark.anyio]
CONTEXT, HORIZON = 48, 6
START = datetime(2026, 1, 5, tzinfo=UTC)
SERIES = SeriesIn(id="svc/cpu", values=[40.0 + (i % 12) for i in range(CONTEXT + 12)], start=START, step_s=300)


class CountingTransport(httpx.AsyncHTTPTransport):
    """The real HTTP transport, counting the requests the client sends."""

    requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return await super().handle_async_request(request)


class OwnServer:
    """A model server of this module's own on a fixed port, started and stopped on demand."""

    def __init__(self, tracking_uri: str, log: Path) -> None:
        self.tracking_uri, self.log = tracking_uri, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = start(self.tracking_uri, self.port, self.log)

    def wait_ready(self) -> None:
        assert self.process is not None
        wait_ready(self.url, self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    async def ensure_up(self) -> None:
        """Start the server if it is down, then wait in a worker thread until it is ready.

        The start itself stays on the test's thread: the server gets a parent-death signal,
        which Linux sends when the *thread* that started it ends, so a server started from a
        worker thread would die when that idle worker is retired.
        """
        if self.process is None:
            self.start()
        await anyio.to_thread.run_sync(self.wait_ready)


@pytest.fixture(scope="module")
def own_server(champion_registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnServer]:
    server = OwnServer(champion_registry, tmp_path_factory.mktemp("own-model-server") / "serve.log")
    try:
        yield server
    finally:
        server.stop()


async def test_forecast_returns_quantiles_with_the_champion_version(model_server_url: str) -> None:
    async with ModelClient(model_server_url) as client:
        info = await client.model_info()
        full, short = await client.forecast([SERIES]), await client.forecast([SERIES], horizon=2)
    versions = {item["name"]: item["version"] for item in info["models"]}
    [result] = full
    assert result.id == "svc/cpu" and result.version == versions[result.model] and result.version
    assert len(result.p10) == len(result.p50) == len(result.p90) == HORIZON
    assert result.timestamps is not None and result.timestamps[0] > START
    assert len(short[0].p50) == 2


async def test_detect_scores_every_point_with_the_champion_version(model_server_url: str) -> None:
    spiky = SeriesIn(id="svc/latency", values=[1.0, 2.0, 1.5, 2.0, 1.0, 90.0, 1.5, 2.0])
    async with ModelClient(model_server_url) as client:
        info = await client.model_info()
        [result] = await client.detect([spiky])
    versions = {item["name"]: item["version"] for item in info["models"]}
    assert result.id == "svc/latency" and len(result.scores) == len(spiky.values)
    assert result.version == versions[result.model] and result.version
    assert all(result.scores[index] >= result.threshold for index in result.anomalies)


async def test_ready_is_true_for_a_live_server_and_false_for_a_down_one(model_server_url: str) -> None:
    async with ModelClient(model_server_url) as live, ModelClient(f"http://127.0.0.1:{free_port()}") as down:
        assert await live.ready() is True
        assert await down.ready() is False


async def test_a_refused_request_is_sent_once_and_names_the_field(model_server_url: str) -> None:
    transport = CountingTransport()
    too_short = SeriesIn(id="svc/cpu", values=[1.0] * (CONTEXT - 1))
    async with ModelClient(model_server_url, retries=5, transport=transport) as client:
        with pytest.raises(ModelRequestError) as caught:
            await client.forecast([too_short])
        assert client.breaker_state == "closed"
    error = caught.value
    assert transport.requests == 1
    assert (error.status, error.code) == (422, "validation_error")
    assert [item.field for item in error.fields] == ["series.0"]
    assert "values" in error.fields[0].message and f"at least {CONTEXT}" in error.fields[0].message
    assert "series.0" in str(error)


async def test_the_breaker_opens_on_a_down_server_fails_fast_then_closes_when_it_is_back(
    own_server: OwnServer,
) -> None:
    await anyio.to_thread.run_sync(own_server.stop)
    transport = CountingTransport()
    client = ModelClient(
        own_server.url, retries=1, backoff_s=0.01, breaker_failures=3, breaker_reset_s=1.0, transport=transport
    )
    async with client:
        for _ in range(3):
            with pytest.raises(ModelServerUnavailable) as caught:
                await client.forecast([SERIES])
            assert not isinstance(caught.value, CircuitOpenError)
            assert own_server.url in str(caught.value)
        assert client.breaker_state == "open" and transport.requests == 6
        with pytest.raises(CircuitOpenError):
            await client.forecast([SERIES])
        with pytest.raises(CircuitOpenError):
            await client.detect([SERIES])
        with pytest.raises(CircuitOpenError):
            await client.model_info()
        assert transport.requests == 6

        await own_server.ensure_up()
        while client.breaker_state == "open":
            await asyncio.sleep(0.05)
        assert client.breaker_state == "half_open"
        [result] = await client.forecast([SERIES])
        assert result.version and client.breaker_state == "closed" and transport.requests == 7


async def test_a_call_made_while_the_server_restarts_succeeds(own_server: OwnServer) -> None:
    await own_server.ensure_up()
    transport = CountingTransport()
    client = ModelClient(own_server.url, retries=240, backoff_s=0.5, max_backoff_s=1.0, transport=transport)
    async with client:
        assert (await client.detect([SERIES]))[0].version
        await anyio.to_thread.run_sync(own_server.stop)
        call = asyncio.create_task(client.forecast([SERIES]))
        while transport.requests < 3:  # the call has failed against the stopped server at least once
            await asyncio.sleep(0.05)
        assert not call.done()
        own_server.start()
        [result] = await call
    assert result.version and len(result.p50) == HORIZON
    assert client.breaker_state == "closed"
