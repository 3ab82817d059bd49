"""Health checks: named probes, each critical (a failure means down) or not (a failure means degraded)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import httpx
from pydantic import BaseModel
from sqlalchemy import Column, DateTime, Engine, Integer, MetaData, Table, func, insert
from starlette.concurrency import run_in_threadpool

HealthStatus = Literal["ok", "degraded", "down"]
Probe = Callable[[], Awaitable[str]]
DEFAULT_TIMEOUT_S = 2.0

_metadata = MetaData()
_probe_table = Table("health_probe", _metadata, Column("id", Integer, primary_key=True), Column("at", DateTime))


@dataclass(frozen=True)
class HealthCheck:
    """A probe returns a short detail when healthy and raises when not."""

    name: str
    probe: Probe
    critical: bool = True
    timeout_s: float = DEFAULT_TIMEOUT_S


class CheckReport(BaseModel):
    name: str
    ok: bool
    critical: bool
    detail: str
    duration_ms: float


class HealthReport(BaseModel):
    status: HealthStatus
    service: str
    version: str
    checks: list[CheckReport]


async def run_checks(checks: Sequence[HealthCheck]) -> list[CheckReport]:
    return list(await asyncio.gather(*(_run(check) for check in checks)))


async def _run(check: HealthCheck) -> CheckReport:
    started = time.perf_counter()
    try:
        detail, ok = await asyncio.wait_for(check.probe(), check.timeout_s), True
    except TimeoutError:
        detail, ok = f"no answer within {check.timeout_s} s", False
    except Exception as error:
        detail, ok = f"{type(error).__name__}: {error}", False
    elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
    return CheckReport(name=check.name, ok=ok, critical=check.critical, detail=detail, duration_ms=elapsed_ms)


def overall_status(reports: Sequence[CheckReport]) -> HealthStatus:
    failed = [report for report in reports if not report.ok]
    if any(report.critical for report in failed):
        return "down"
    return "degraded" if failed else "ok"


def store_writable(engine: Engine) -> HealthCheck:
    """Critical: a row can be written to the state store (then rolled back)."""
    _probe_table.create(engine, checkfirst=True)

    def write_and_roll_back() -> str:
        with engine.connect() as connection, connection.begin() as transaction:
            connection.execute(insert(_probe_table).values(at=func.current_timestamp()))
            transaction.rollback()
        return f"{engine.url.get_backend_name()} store accepts writes"

    async def probe() -> str:
        return await run_in_threadpool(write_and_roll_back)

    return HealthCheck("store writable", probe)


def model_server_reachable(base_url: str, *, critical: bool = False) -> HealthCheck:
    """The model server answers ``GET /readyz`` with 200; not critical by default (services fall back)."""

    async def probe() -> str:
        async with httpx.AsyncClient(timeout=DEFAULT_TIMEOUT_S) as client:
            response = await client.get(f"{base_url.rstrip('/')}/readyz")
        response.raise_for_status()
        return f"{base_url} is ready"

    return HealthCheck("model server reachable", probe, critical=critical)
