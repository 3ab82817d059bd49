"""The optimizer service over real HTTP: a real PostgreSQL and Redis, a real fleet, auth and audit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest
import redis
from support.net import free_port, served
from support.redis_server import redis_server
from support.tms_db import fresh_database, tms_database

from actuators.optimizer.database.apply import drop_sql, index_name
from actuators.optimizer.database.plans import Candidate
from actuators.optimizer.journal import Kind, OptimizationJournal, Status
from actuators.optimizer.service import build_app
from tmsops.auth import Scope, service_token
from tmsops.fleet.supervisor import Fleet
from tmsops.settings import FleetConfig, FleetService, OptimizerSettings
from tmsops.state import make_engine

pytestmark = [pytest.mark.anyio, pytest.mark.xdist_group("postgres-optimizer")]
USELESS = {"table": "customers", "columns": ["region"]}


@pytest.fixture(scope="module")
def tms_dsn() -> Iterator[str]:
    with tms_database() as dsn:
        yield dsn


@dataclass
class Api:
    client: httpx.AsyncClient
    operator: dict[str, str]
    reader: dict[str, str]
    admin: dict[str, str]
    state_dir: Path

    async def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.client.post(path, json=body, headers=self.operator if headers is None else headers)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    tracking = FleetService(command=["{python}", "-m", "tmsops.demo.tracking"], port=free_port(), cpu_request="100m")
    running = Fleet(FleetConfig(services={"tracking": tracking}, usage_interval=0.5), state_dir=tmp_path / "fleet")
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def start(tmp_path: Path, fleet: Fleet, **optimization: Any) -> AsyncIterator[Api]:
    settings = OptimizerSettings(
        state_dir=tmp_path / "state",
        prometheus_url=f"http://127.0.0.1:{free_port()}",  # none: the network part is unavailable
        model_server_url=f"http://127.0.0.1:{free_port()}",
        optimization=optimization,
    )
    app = build_app(settings, target=fleet, sample_usage=False)
    async with served(app, free_port()) as base, httpx.AsyncClient(base_url=base, timeout=120) as client:
        tokens = app.state.tokens
        yield Api(
            client,
            operator={"Authorization": f"Bearer {service_token(tokens, 'operator')}"},
            reader={"Authorization": f"Bearer {service_token(tokens, 'reader', Scope.READ)}"},
            admin={"Authorization": f"Bearer {service_token(tokens, 'admin-test', Scope.ADMIN)}"},
            state_dir=tmp_path / "state",
        )


@pytest.fixture
async def api(tmp_path: Path, fleet: Fleet, tms_dsn: str) -> AsyncIterator[Api]:
    async for running in start(tmp_path, fleet, database={"dsn": tms_dsn}):
        yield running


def index_exists(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn) as connection:
        return connection.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone() == (True,)


async def test_health_reports_the_database_and_the_unconfigured_cache(api: Api) -> None:
    health = (await api.client.get("/health")).json()
    checks = {check["name"]: check for check in health["checks"]}
    assert checks["database"]["ok"] and "extensions present" in checks["database"]["detail"]
    assert not checks["cache"]["ok"] and "redisUrl" in checks["cache"]["detail"]
    assert checks["crash recovery"]["ok"]
    assert health["status"] == "degraded"


async def test_recommendations_hold_the_index_advice_and_say_what_is_unavailable(api: Api) -> None:
    answer = await api.client.get("/recommendations")
    assert answer.status_code == 200
    body = answer.json()
    tables = {item["table"] for item in body["database"]["recommendations"]}
    assert {"tracking_events", "shipments"} <= tables
    assert "redisUrl" in body["unavailable"]["cache"]
    assert "network:tracking" in body["unavailable"]
    assert [item["service"] for item in body["resources"]] == ["tracking"]


async def test_changes_need_the_operate_scope_and_every_attempt_is_audited(api: Api) -> None:
    assert (await api.post("/optimization/database", {"dryRun": True}, headers={})).status_code == 401
    assert (await api.post("/optimization/database", {"dryRun": True}, headers=api.reader)).status_code == 403
    assert (await api.post("/optimization/database", {"dryRun": True})).status_code == 200

    entries = (await api.client.get("/audit", headers=api.reader)).json()["entries"]
    attempts = [entry for entry in entries if (entry["method"], entry["path"]) == ("POST", "/optimization/database")]
    assert sorted(entry["status_code"] for entry in attempts) == [200, 401, 403]


async def test_a_dry_run_plans_the_recommended_indexes_and_creates_none(api: Api, tms_dsn: str) -> None:
    answer = await api.post("/optimization/database", {"dryRun": True})

    applied = answer.json()["applied"]
    assert applied and {entry["status"] for entry in applied} == {"dry_run"}
    assert not any(index_exists(tms_dsn, entry["subject"]) for entry in applied)


async def test_a_useless_index_is_rolled_back_and_a_kept_one_can_be_taken_back(api: Api, tms_dsn: str) -> None:
    useless = (await api.post("/optimization/database", {"indexes": [USELESS]})).json()["applied"][0]
    assert useless["status"] == "rolled_back" and "index dropped" in useless["reason"]
    assert not index_exists(tms_dsn, useless["subject"])

    spec = {"table": "tracking_events", "columns": ["shipment_id"]}
    name = index_name(Candidate("tracking_events", ("shipment_id",)))
    try:
        kept = (await api.post("/optimization/database", {"indexes": [spec]})).json()["applied"][0]
        assert kept["status"] == "kept" and kept["subject"] == name and index_exists(tms_dsn, name)
        await check_history_and_take_back(api, tms_dsn, kept, useless)
    finally:
        with psycopg.connect(tms_dsn, autocommit=True) as connection:
            connection.execute(drop_sql(name))


async def check_history_and_take_back(api: Api, tms_dsn: str, kept: dict[str, Any], useless: dict[str, Any]) -> None:

    history = (await api.client.get("/optimizations", params={"kind": "index"})).json()
    assert [entry["id"] for entry in history] == [kept["id"], useless["id"]]
    metrics = (await api.client.get("/metrics")).text
    assert 'tmsops_optimizer_changes{kind="index",status="kept"} 1.0' in metrics
    assert 'tmsops_optimizer_changes{kind="index",status="rolled_back"} 1.0' in metrics
    assert (await api.client.get(f"/optimizations/{kept['id']}")).json()["status"] == "kept"

    taken_back = await api.post(f"/optimizations/{kept['id']}/rollback", {})
    assert taken_back.status_code == 200 and taken_back.json()["status"] == "rolled_back"
    assert not index_exists(tms_dsn, kept["subject"])
    again = await api.post(f"/optimizations/{kept['id']}/rollback", {})
    assert again.status_code == 409 and "only a kept change" in again.json()["error"]["message"]


async def test_bad_requests_get_4xx_naming_the_problem(api: Api) -> None:
    cases = [
        ("/optimization/database", {"indexes": [{"table": "parcels", "columns": ["id"]}]}, 404, "parcels"),
        ("/optimization/database", {"indexes": [{"table": "shipments", "columns": ["colour"]}]}, 422, "colour"),
        ("/optimization/database", {"indexes": [{"table": "x; DROP TABLE y", "columns": ["id"]}]}, 422, "table"),
        ("/optimization/database", {"indexes": [{"table": "shipments", "columns": ["id"]}]}, 409, "shipments_pkey"),
        ("/optimization/database", {"dryRun": True, "unknownField": 1}, 422, "unknownField"),
        (
            "/optimization/database",
            {"indexes": [{"table": "t", "columns": ["a"], "descending": [1, 0]}]},
            422,
            "descending",
        ),
        ("/auto-optimize", {"service": "nope"}, 404, "nope"),
        ("/auto-optimize", {"service": "tracking", "scope": "everything"}, 422, "scope"),
        ("/optimization/cache", {"dryRun": True}, 422, "redisUrl"),
        ("/optimization/cache", {"targetHitRate": 1.5}, 422, "targetHitRate"),
    ]
    for path, body, status, word in cases:
        answer = await api.post(path, body)
        assert answer.status_code == status, (path, body, answer.text)
        assert word in answer.text, (path, body, answer.text)
    assert (await api.client.get("/optimizations/999999")).status_code == 404
    for bad in ("soon", "99999999999d"):
        overview = await api.client.get("/analysis/overview", params={"timeRange": bad})
        assert overview.status_code == 422 and "timeRange" in overview.text


async def test_auto_optimize_says_what_it_did_and_what_it_skipped(api: Api) -> None:
    answer = await api.post("/auto-optimize", {"service": "tracking", "scope": "all", "dryRun": True})

    body = answer.json()
    assert answer.status_code == 200 and body["dry_run"] is True
    assert any(reason.startswith("database: it belongs to shipment-service") for reason in body["skipped"])
    assert any(reason.startswith("cache: it belongs to shipment-service") for reason in body["skipped"])
    assert any(reason.startswith("resources:") for reason in body["skipped"])  # too few usage samples yet


async def test_overview_bottlenecks_and_dashboard(api: Api) -> None:
    overview = (await api.client.get("/analysis/overview", params={"timeRange": "15m"})).json()
    assert overview["database"]["recommended_indexes"] >= 2 and overview["database"]["slowest"]
    assert "cache" in overview["unavailable"] and "network:tracking" in overview["unavailable"]

    ranked = (await api.client.get("/analysis/bottlenecks")).json()
    assert ranked and ranked[0]["part"] == "database"
    assert [item["score"] for item in ranked] == sorted((item["score"] for item in ranked), reverse=True)
    assert any(item["recommendation"] and "CREATE INDEX" in item["recommendation"] for item in ranked)

    await api.post("/optimization/database", {"indexes": [USELESS]})
    data = (await api.client.get("/dashboard", headers={"Accept": "application/json"})).json()
    assert data["changes"][0]["status"] == "rolled_back" and data["measured"]
    assert data["advice"], "the bottlenecks just computed"
    page = await api.client.get("/dashboard")
    assert page.status_code == 200 and "tmsopsBars" in page.text and "/static/charts.js" in page.text


async def test_an_unreachable_or_unprepared_database_degrades_health_and_refuses_with_4xx_or_503(
    tmp_path: Path, fleet: Fleet
) -> None:
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    async for api in start(tmp_path / "down", fleet, database={"dsn": down}):
        health = {check["name"]: check for check in (await api.client.get("/health")).json()["checks"]}
        assert not health["database"]["ok"] and "cannot connect" in health["database"]["detail"]
        answer = await api.post("/optimization/database", {"dryRun": True})
        assert answer.status_code == 503 and "cannot connect" in answer.json()["error"]["message"]
        assert "database" in (await api.client.get("/recommendations")).json()["unavailable"]
    async for api in start(tmp_path / "bad", fleet, database={"dsn": "host=127.0.0.1 port=x = ="}):
        answer = await api.post("/optimization/database", {"dryRun": True})
        assert answer.status_code == 422 and "optimization.database.dsn" in answer.text
    with fresh_database(extensions=()) as bare:
        async for api in start(tmp_path / "bare", fleet, database={"dsn": bare}):
            answer = await api.post("/optimization/database", {"dryRun": True})
            assert answer.status_code == 409 and "CREATE EXTENSION pg_stat_statements" in answer.text
            health = {check["name"]: check for check in (await api.client.get("/health")).json()["checks"]}
            assert not health["database"]["ok"] and "pg_stat_statements" in health["database"]["detail"]


async def test_the_cache_routes_analyse_plan_and_refuse_a_read_only_replica(tmp_path: Path, fleet: Fleet) -> None:
    with redis_server(tmp_path / "primary") as url:
        client = redis.Redis.from_url(url)
        for index in range(300):
            client.set(f"shipment:{index}", b"x" * 200)
        before = client.config_get("maxmemory*")
        async for api in start(tmp_path / "cache", fleet, cache={"redisUrl": url, "sampleWindow": "1s"}):
            pending = (await api.client.get("/recommendations")).json()["unavailable"]["cache"]
            assert "no cache analysis yet" in pending

            answer = await api.post("/optimization/cache", {"dryRun": True})
            assert answer.status_code == 200, answer.text
            [entry] = answer.json()
            assert entry["status"] == "dry_run" and entry["kind"] == "cache"
            assert client.config_get("maxmemory*") == before

            report = (await api.client.get("/recommendations")).json()["cache"]
            assert report["stats"]["keys_total"] >= 300 and report["recommendation"]["policy"]["policy"]
            overview = (await api.client.get("/analysis/overview")).json()
            assert overview["cache"]["dbsize"] >= 300 and "cache" not in overview["unavailable"]
            health = {check["name"]: check for check in (await api.client.get("/health")).json()["checks"]}
            assert health["cache"]["ok"] and "hit ratio" in health["cache"]["detail"]
        client.close()
        port = url.rsplit(":", 1)[1].split("/")[0]
        with redis_server(tmp_path / "replica", "--replicaof", "127.0.0.1", port) as replica:
            async for api in start(tmp_path / "replica-api", fleet, cache={"redisUrl": replica, "sampleWindow": "1s"}):
                answer = await api.post("/optimization/cache", {"dryRun": True})
                assert answer.status_code == 409 and "replica" in answer.json()["error"]["message"]


async def test_a_restart_rolls_back_an_index_a_crash_left_without_a_verdict(
    tmp_path: Path, fleet: Fleet, tms_dsn: str
) -> None:
    candidate = Candidate("shipments", ("status",))
    name = index_name(candidate)
    with psycopg.connect(tms_dsn, autocommit=True) as connection:
        connection.execute(candidate.definition(name))
    (tmp_path / "state").mkdir(exist_ok=True)
    journal = OptimizationJournal(make_engine(f"sqlite:///{tmp_path / 'state' / 'tmsops.db'}"))
    entry = journal.begin(
        Kind.INDEX, "shipment-service", name, "create_index", change={"sql": "..."}, undo={"sql": drop_sql(name)}
    )
    journal.update(entry.id, status=Status.MEASURING)

    async for api in start(tmp_path, fleet, database={"dsn": tms_dsn}):
        with anyio.move_on_after(60):  # a state to wait for, not a time to meet
            while (recovered := (await api.client.get(f"/optimizations/{entry.id}")).json())["status"] == "measuring":
                await anyio.sleep(0.05)
        assert recovered["status"] == "rolled_back" and "restart" in recovered["reason"]
        assert not index_exists(tms_dsn, name)
