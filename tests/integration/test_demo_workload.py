"""The demo workload as real processes: its routes, a short replay through the gateway, PostgreSQL with Redis."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import require_service
from support.net import threaded_http

from tmsops.loadgen import ReplayOptions, rate_schedule, read_trace, run_replay

ROOT = Path(__file__).resolve().parents[2]
SEED_ROWS = 2000
STARTUP_DEADLINE_S = 30.0
POSTGRES_URL = os.environ.get("TMSOPS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TMSOPS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NEW_SHIPMENT = {"customer_id": 7, "origin": "Rotterdam", "destination": "Milan", "weight_kg": 12.5}


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> Callable[[], object] | None:
    """A pre-exec hook: the child gets SIGTERM if the test run dies (Linux only)."""
    if sys.platform != "linux":
        return None
    return functools.partial(ctypes.CDLL(None, use_errno=True).prctl, 1, signal.SIGTERM)


def spawn(name: str, module: str, env: dict[str, str], logs: Path) -> Service:
    """Start ``python -m module`` on a free port."""
    port = free_port()
    log = logs / f"{name}-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            env={**os.environ, "PORT": str(port), **env},
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(),
        )
    return Service(name, process, f"http://127.0.0.1:{port}", log)


def stop(service: Service) -> None:
    if service.process.poll() is None:
        service.process.terminate()
        try:
            service.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait(timeout=10)


def wait_healthy(services: list[Service]) -> None:
    """Wait until every service answers ``GET /health`` with 200; fail with its log if it exits."""
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    with httpx.Client(timeout=1.0, trust_env=False) as client:
        for service in services:
            while not healthy(client, service):
                if service.process.poll() is not None:
                    pytest.fail(f"{service.name} exited with {service.process.returncode}:\n{tail(service)}")
                if time.monotonic() > deadline:
                    pytest.fail(f"{service.name} was not healthy within {STARTUP_DEADLINE_S} s:\n{tail(service)}")
                time.sleep(0.1)


def healthy(client: httpx.Client, service: Service) -> bool:
    try:
        return client.get(f"{service.url}/health").status_code == 200
    except httpx.HTTPError:
        return False


def tail(service: Service) -> str:
    return service.log.read_text(errors="replace")[-3000:]


@contextmanager
def running(specs: list[tuple[str, str, dict[str, str]]], logs: Path) -> Iterator[dict[str, Service]]:
    """Start the services (name, module, env) together, wait for their health, and stop them all after."""
    started: list[Service] = []
    try:
        for name, module, env in specs:
            started.append(spawn(name, module, env, logs))
        wait_healthy(started)
        yield {service.name: service for service in started}
    finally:
        for service in started:
            stop(service)


def light(**env: str) -> dict[str, str]:
    """Short service times so the tests run quickly on a small machine."""
    return {"CPU_MS": "1", "SERVICE_TIME_MS": "5", "SEED_ROWS": str(SEED_ROWS), **env}


@pytest.fixture(scope="module")
def sqlite_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shipments") / "nested" / "shipments.db"


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory, sqlite_path: Path) -> Iterator[dict[str, Service]]:
    """tracking, two shipment replicas on one SQLite file (the second with an unreachable Redis), and a gateway."""
    logs = tmp_path_factory.mktemp("logs")
    database = {"DATABASE_URL": f"sqlite:///{sqlite_path}"}
    dead_redis = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    with running(
        [
            ("tracking", "tmsops.demo.tracking", light()),
            ("shipment", "tmsops.demo.shipment", light(**database)),
            ("shipment-b", "tmsops.demo.shipment", light(**database, **dead_redis)),
        ],
        logs,
    ) as upstreams:
        gateway_env = {"SHIPMENT_URL": upstreams["shipment"].url, "TRACKING_URL": upstreams["tracking"].url}
        with running([("gateway", "tmsops.demo.gateway", light(**gateway_env))], logs) as gateway:
            yield {**upstreams, **gateway}


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0, trust_env=False) as http:
        yield http


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    return dict(error)


def test_gateway_merges_shipment_and_tracking(workload: dict[str, Service], client: httpx.Client) -> None:
    gateway = workload["gateway"].url
    body = client.get(f"{gateway}/api/shipments/42").json()
    direct = client.get(f"{workload['shipment'].url}/shipments/42").json()
    events = client.get(f"{workload['tracking'].url}/tracking/42").json()["events"]
    assert {key: body[key] for key in direct} == direct
    assert body["tracking"] == events and events
    assert client.get(f"{workload['tracking'].url}/tracking/42").json()["events"] == events


def test_not_found_and_bad_input(workload: dict[str, Service], client: httpx.Client) -> None:
    gateway = workload["gateway"].url
    assert_error(client.get(f"{gateway}/api/shipments/{SEED_ROWS * 1000}"), 404, "not_found")
    assert_error(client.get(f"{gateway}/nowhere"), 404)
    assert_error(client.post(f"{gateway}/api/shipments", json={"customer_id": 1}), 422, "validation_error")
    assert_error(client.post(f"{gateway}/api/shipments", content=b"{oops"), 422, "invalid_json")
    bad_weight = {**NEW_SHIPMENT, "weight_kg": -1}
    assert_error(client.post(f"{gateway}/api/shipments", json=bad_weight), 422, "validation_error")
    assert_error(client.get(f"{workload['shipment'].url}/shipments", params={"customer_id": "x"}), 422)
    assert_error(client.get(f"{workload['shipment'].url}/shipments"), 422)


def test_create_then_read_back(workload: dict[str, Service], client: httpx.Client) -> None:
    gateway = workload["gateway"].url
    created = client.post(f"{gateway}/api/shipments", json=NEW_SHIPMENT)
    assert created.status_code == 201, created.text
    shipment = created.json()
    assert shipment["id"] > SEED_ROWS and shipment["status"] == "created"
    read = client.get(f"{gateway}/api/shipments/{shipment['id']}")
    assert read.status_code == 200
    assert {key: read.json()[key] for key in shipment} == shipment
    listed = client.get(f"{gateway}/api/customers/7/shipments", params={"limit": 500}).json()["shipments"]
    assert shipment["id"] in [row["id"] for row in listed]
    assert all(row["customer_id"] == 7 for row in listed)


def test_replicas_seed_once_without_a_customer_index(workload: dict[str, Service], sqlite_path: Path) -> None:
    with sqlite3.connect(sqlite_path) as connection:
        seeded = connection.execute("SELECT count(*) FROM shipments WHERE id <= ?", (SEED_ROWS,)).fetchone()[0]
        indexes = connection.execute("PRAGMA index_list(shipments)").fetchall()
    assert seeded == SEED_ROWS
    assert indexes == []


def test_an_unreachable_redis_does_not_fail_requests(workload: dict[str, Service], client: httpx.Client) -> None:
    response = client.get(f"{workload['shipment-b'].url}/shipments/3")
    assert response.status_code == 200
    assert response.headers["x-cache"] == "miss"


class FakeTracking(BaseHTTPRequestHandler):
    """An upstream that fails: ``/tracking/1`` answers 500, ``/tracking/2`` answers too late."""

    def do_GET(self) -> None:
        if self.path.endswith("/2"):
            time.sleep(2.0)
        with contextlib.suppress(OSError):  # the gateway gave up on /tracking/2 and closed the connection
            self.send_response(500 if self.path.endswith("/1") else 200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"events": []}')

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake_tracking() -> Iterator[str]:
    with threaded_http(FakeTracking) as url:
        yield url


def test_upstream_failures_name_the_upstream(
    workload: dict[str, Service], fake_tracking: str, client: httpx.Client, tmp_path: Path
) -> None:
    env = light(SHIPMENT_URL=workload["shipment"].url, TRACKING_URL=fake_tracking, UPSTREAM_TIMEOUT_S="0.5")
    dead = light(SHIPMENT_URL=f"http://127.0.0.1:{free_port()}", TRACKING_URL=fake_tracking)
    with running([("gateway", "tmsops.demo.gateway", env), ("dead", "tmsops.demo.gateway", dead)], tmp_path) as up:
        failed = assert_error(client.get(f"{up['gateway'].url}/api/shipments/1"), 502, "upstream_error")
        late = assert_error(client.get(f"{up['gateway'].url}/api/shipments/2"), 504, "upstream_timeout")
        down = assert_error(client.get(f"{up['dead'].url}/api/customers/1/shipments"), 502, "upstream_unavailable")
    assert "tracking-service" in str(failed["message"]) and "tracking-service" in str(late["message"])
    assert "shipment-service" in str(down["message"])


def test_short_replay_through_the_gateway(workload: dict[str, Service], tmp_path: Path) -> None:
    trace_file = tmp_path / "trace.csv"
    trace_file.write_text("timestamp,value\n2024-01-01 00:00:00,1\n2024-01-01 00:05:00,2\n2024-01-01 00:10:00,1\n")
    schedule = rate_schedule(read_trace(trace_file), compress=150, peak_rps=30)
    report = run_replay(
        schedule, workload["gateway"].url, ReplayOptions(seed=1, max_id=SEED_ROWS), trace=str(trace_file)
    )
    assert report.errors == 0, report.errors_by_kind
    assert report.requests > 0 and report.ok == report.requests
    assert set(report.requests_by_route) == {"get", "list", "post"}
    assert report.duration_s == 4.0 and len(report.timeline) == 4
    assert sum(point.sent for point in report.timeline) == report.requests
    assert report.latency_p50_ms is not None and report.latency_p95_ms is not None
    assert report.latency_p99_ms is not None
    assert 0 < report.latency_p50_ms <= report.latency_p95_ms <= report.latency_p99_ms
    assert report.achieved_rps > 0 and report.error_pct == 0.0


@pytest.mark.parametrize(
    ("module", "env", "variable"),
    [
        ("tmsops.demo.tracking", {}, "PORT"),
        ("tmsops.demo.tracking", {"PORT": "http"}, "PORT"),
        ("tmsops.demo.shipment", {"PORT": "1"}, "DATABASE_URL"),
        ("tmsops.demo.shipment", {"PORT": "1", "DATABASE_URL": "mysql://db/x"}, "DATABASE_URL"),
        ("tmsops.demo.gateway", {"PORT": "1", "SHIPMENT_URL": "x", "TRACKING_URL": "http://h"}, "SHIPMENT_URL"),
        ("tmsops.demo.tracking", {"PORT": "1", "CONCURRENCY": "0"}, "CONCURRENCY"),
    ],
)
def test_bad_environment_exits_2_naming_the_variable(module: str, env: dict[str, str], variable: str) -> None:
    names = ("PORT", "DATABASE_URL", "SHIPMENT_URL", "TRACKING_URL", "CONCURRENCY")
    clean = {key: value for key, value in os.environ.items() if key not in names}
    done = subprocess.run(
        [sys.executable, "-m", module], env={**clean, **env}, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and variable in done.stderr


def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path) -> None:
    slow = {"CPU_MS": "0", "SERVICE_TIME_MS": "1500", "SERVICE_TIME_SIGMA": "0"}
    with running([("tracking", "tmsops.demo.tracking", slow)], tmp_path) as services:
        tracking = services["tracking"]
        answers: list[int] = []
        request = threading.Thread(target=lambda: answers.append(httpx.get(f"{tracking.url}/tracking/5").status_code))
        request.start()
        time.sleep(0.5)
        tracking.process.send_signal(signal.SIGTERM)
        request.join(timeout=20)
        exit_code = tracking.process.wait(timeout=20)
    assert answers == [200]
    assert exit_code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its graceful shutdown


def test_bounded_concurrency_and_real_cpu_work(client: httpx.Client, tmp_path: Path) -> None:
    queued = {"CONCURRENCY": "1", "CPU_MS": "0", "SERVICE_TIME_MS": "1500", "SERVICE_TIME_SIGMA": "0"}
    busy = {"CPU_MS": "20", "SERVICE_TIME_MS": "0"}
    specs = [("queued", "tmsops.demo.tracking", {**queued, "QUEUE_TIMEOUT_MS": "300"})]
    with running([*specs, ("busy", "tmsops.demo.tracking", busy)], tmp_path) as services:
        statuses = sorted(asyncio.run(concurrent_gets(f"{services['queued'].url}/tracking/1", 3)))
        process = psutil.Process(services["busy"].process.pid)
        before = sum(process.cpu_times()[:2])
        for shipment_id in range(25):
            assert client.get(f"{services['busy'].url}/tracking/{shipment_id}").status_code == 200
        used_s = sum(process.cpu_times()[:2]) - before
    assert statuses == [200, 503, 503]
    assert used_s >= 25 * 0.020


async def concurrent_gets(url: str, count: int) -> list[int]:
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as http:
        responses = await asyncio.gather(*(http.get(url) for _ in range(count)))
    return [response.status_code for response in responses]


@pytest.fixture
def postgres_schema() -> Iterator[str]:
    """A fresh schema name in the test database, dropped afterwards."""
    import psycopg

    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.OperationalError as error:
        require_service("postgresql", f"cannot connect to {POSTGRES_URL}: {error}")
    schema = f"tms_test_{uuid.uuid4().hex[:10]}"
    try:
        yield schema
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of its own in the test Redis, its keys deleted afterwards."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as error:
        require_service("redis", f"cannot reach {REDIS_URL}: {error}")
    prefix = f"tmsops-test-{uuid.uuid4().hex[:10]}:"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_postgres_with_redis_cache(
    postgres_schema: str, redis_prefix: str, client: httpx.Client, tmp_path: Path
) -> None:
    import psycopg
    import redis

    env = light(DATABASE_URL=POSTGRES_URL, DB_SCHEMA=postgres_schema, REDIS_URL=REDIS_URL, CACHE_PREFIX=redis_prefix)
    specs = [("a", "tmsops.demo.shipment", env), ("b", "tmsops.demo.shipment", env)]
    with running(specs, tmp_path) as replicas:
        first = client.get(f"{replicas['a'].url}/shipments/7")
        second = client.get(f"{replicas['a'].url}/shipments/7")
        created = client.post(f"{replicas['b'].url}/shipments", json=NEW_SHIPMENT)
        read_back = client.get(f"{replicas['a'].url}/shipments/{created.json()['id']}")
        listed = client.get(f"{replicas['b'].url}/shipments", params={"customer_id": 7, "limit": 500})
        assert redis.Redis.from_url(REDIS_URL).exists(f"{redis_prefix}7") == 1
    assert first.status_code == second.status_code == 200
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert first.json() == second.json()
    assert created.status_code == 201 and created.json()["id"] == SEED_ROWS + 1
    assert read_back.json() == created.json()
    assert created.json()["id"] in [row["id"] for row in listed.json()["shipments"]]
    with psycopg.connect(POSTGRES_URL) as connection:
        count = connection.execute(f"SELECT count(*) FROM {postgres_schema}.shipments").fetchone()
        indexes = connection.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = 'shipments'", (postgres_schema,)
        ).fetchall()
    assert count == (SEED_ROWS + 1,)
    assert [definition for (definition,) in indexes if "customer_id" in definition] == []
    assert json.loads(second.text)["id"] == 7
