"""Schemathesis against the OpenAPI document of every HTTP service, over real HTTP.

Each test starts one service on throwaway dependencies (a fleet of echo replicas, a PostgreSQL
database and a Redis of its own, the fake Kubernetes API server, the real model server), runs
schemathesis's engine on its OpenAPI document (:func:`support.fuzz.fuzz`: the phases of
``st run``, positive and negative data, a fixed seed, derandomized generation, no deadline) with
an admin token, so that the handlers run and not only the token check, and requires no failure
and at least ``MIN_CALLS`` HTTP calls, counted as they are made.

Checks: every built-in one of schemathesis: no 5xx; status code, content type, headers and body
as documented; schema-violating data refused; schema-valid data accepted; a token required where
the document says so; a deleted resource gone; the ``Allow`` header of a 405. Where one is relaxed
the settings say for which operation and why (``accepts_or_422``, ``checks=``).

Side effects stay in the throwaway targets and are bounded: an experiment lasts at most 2 s
(``maxExperimentDuration``) and its faults are Chaos Mesh objects on the fake API server; a fault
injected through the fleet's API lasts at most 2 s, and CPU, memory and disk faults, which would
load this machine, are only dry runs; a cache change is measured over 0.1 s windows. Every test
checks that no fault is left active once its service has stopped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import schemathesis
from fastapi import FastAPI
from kubernetes.client import ApiClient, Configuration
from support.chaos_env import tcp_echo
from support.fake_kube import CHAOS_MESH_KINDS, FakeKube, fake_kube
from support.fuzz import ACCEPTS_OR_422, FuzzResult, before_every_call, fuzz, in_background, ok_server
from support.net import free_port, served
from support.redis_server import redis_server
from support.tms_db import fresh_database

from actuators.autoscaler.service import build_app as autoscaler_app
from actuators.optimizer.service import build_app as optimizer_app
from chaos.service import build_app as chaos_app
from tmsops.auth import Scope, service_token
from tmsops.fleet.api import build_app as fleet_app
from tmsops.fleet.supervisor import Fleet
from tmsops.settings import (
    AutoscalerSettings,
    ChaosSettings,
    FleetConfig,
    FleetService,
    FleetSettings,
    KubernetesTargetSettings,
    OptimizerSettings,
)
from tmsops.targets.base import Target
from tmsops.targets.kubernetes import KubernetesTarget
from tmsops.targets.model import FaultState

MIN_CALLS = 1000
ECHO = ["{python}", "-m", "tmsops.fleet.echo"]
MODEL_SERVER_TOKEN = "test-token"  # what the model_server_url fixture in conftest.py sets
FORECAST_WAIT_S = 60.0


@dataclass
class Running:
    """A service under test: its base URL and an admin token."""

    url: str
    token: str


def settings(max_examples: int, **extra: Any) -> dict[str, Any]:
    """schemathesis.toml as a dict: reproducible generation (Hypothesis's derandomize; the engine sets
    no deadline), no example database, one worker, and ``extra``."""
    generation = {"max-examples": max_examples, "deterministic": True, "database": "none"}
    return {"generation": generation, "workers": 1, "request-timeout": 60, **extra}


def accepts_or_422(
    method: str, path: str, why: str, *, checks: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """Settings of one operation that answers 422 to schema-valid data, ``why``: a rule the schema
    cannot state (runtime state, one field against another); ``checks``: more check settings."""
    relaxed = {"positive_data_acceptance": {"expected-statuses": ACCEPTS_OR_422}, **(checks or {})}
    return {"include-method": method, "include-path": path, "checks": relaxed, **extra}


def dictionary(name: str, *paths: str, probability: float = 0.5) -> dict[str, Any]:
    """``paths`` (``query.service``, ``body.target.service``...) take a value of the dictionary
    ``name`` this often, and a generated one otherwise."""
    return {path: {"dictionary": name, "probability": probability} for path in paths}


def assert_clean(result: FuzzResult) -> None:
    assert not result.errors and not result.failures, result.report()
    assert result.total >= MIN_CALLS, result.summary()
    print(result.summary())


def admin(app: FastAPI) -> str:
    return service_token(app.state.tokens, "fuzz", Scope.ADMIN)


async def active_faults(target: Target) -> list[str]:
    return [fault.id for fault in await target.faults() if fault.state is FaultState.ACTIVE]


def echo_fleet(tmp_path: Path, name: str) -> Fleet:
    service = FleetService(command=ECHO, port=free_port(), max_replicas=3, cpu_request="100m")
    return Fleet(FleetConfig(services={name: service}, usage_interval=0.5), state_dir=tmp_path / "fleet")


# --- the autoscaler ------------------------------------------------------------------------


@asynccontextmanager
async def autoscaler(tmp_path: Path, model_server: str) -> AsyncIterator[Running]:
    """The autoscaler with its control loop (forecasting, recommending) on an echo fleet."""
    fleet = echo_fleet(tmp_path, "echo")
    await fleet.start()
    try:
        scaling = {"mode": "forecastOnly", "interval": "0.1s", "forecastStep": "0.1s", "maxReplicas": 3}
        config = AutoscalerSettings(
            state_dir=tmp_path, log_level="WARNING", model_server_url=model_server, scaling=scaling
        )
        app = autoscaler_app(config, target=fleet)
        async with served(app, free_port()) as url:
            await first_forecast(app)
            yield Running(url, admin(app))
    finally:
        await fleet.stop()


async def first_forecast(app: FastAPI) -> None:
    """Wait until the control loop has a forecast, so that /predictions has one from the start."""
    deadline = time.monotonic() + FORECAST_WAIT_S
    while not any(state.forecast for state in app.state.autoscaler.services.values()):
        assert time.monotonic() < deadline, f"no forecast from the control loop within {FORECAST_WAIT_S} s"
        await asyncio.sleep(0.1)


@pytest.mark.xdist_group("model-server")
def test_the_autoscaler_api(tmp_path: Path, model_server_url: str) -> None:
    config = settings(
        130,
        dictionaries={"services": {"values": ["echo"]}},
        parameters=dictionary("services", "query.service", "body.service"),
        operations=[
            accepts_or_422("POST", "/scale", "replicas outside minReplicas..maxReplicas of the service"),
            accepts_or_422("GET", "/predictions", "a timeHorizon beyond the model's horizon; no forecast yet"),
            accepts_or_422("GET", "/cost-analysis", "a window of zero length or over 366 days"),
        ],
    )
    with in_background(lambda: autoscaler(tmp_path, model_server_url)) as running:
        result = fuzz(f"{running.url}/openapi.json", config, token=running.token)
    assert_clean(result)


# --- the model server ----------------------------------------------------------------------

# The two model endpoints take nearly all the examples: the other six have no parameters.
MODEL_API = {"generation": {"max-examples": 400}}


@pytest.mark.xdist_group("model-server")
def test_the_model_server_api(model_server_url: str) -> None:
    config = settings(
        60,
        operations=[
            accepts_or_422("POST", "/forecast", "a series shorter than the model's context", **MODEL_API),
            accepts_or_422("POST", "/detect", "timestamps not increasing, or not one per value", **MODEL_API),
        ],
    )
    result = fuzz(f"{model_server_url}/docs.json", config, token=MODEL_SERVER_TOKEN)
    assert_clean(result)
    assert httpx.get(f"{model_server_url}/readyz", timeout=30).status_code == 200


# --- the optimizer -------------------------------------------------------------------------

SHIPMENTS = """
CREATE TABLE shipments (id bigint PRIMARY KEY, customer_id bigint NOT NULL, status text NOT NULL);
INSERT INTO shipments SELECT n, n % 50, (ARRAY['new', 'sent', 'done'])[1 + n % 3] FROM generate_series(1, 2000) n;
ANALYZE shipments;
"""


@pytest.fixture
def small_database() -> Iterator[str]:
    """A throwaway database with the optimizer's extensions and one small table; its DSN."""
    with fresh_database() as dsn:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(SHIPMENTS)
        yield dsn


@asynccontextmanager
async def optimizer(tmp_path: Path, dsn: str, redis_url: str) -> AsyncIterator[Running]:
    """The optimizer on that database, a Redis of its own and an echo fleet."""
    fleet = echo_fleet(tmp_path, "shipment-service")  # the service the database and the cache belong to
    await fleet.start()
    try:
        config = OptimizerSettings(
            state_dir=tmp_path / "state",
            log_level="WARNING",
            prometheus_url=f"http://127.0.0.1:{free_port()}",  # none: the network part is unavailable
            model_server_url=f"http://127.0.0.1:{free_port()}",
            optimization={"database": {"dsn": dsn}, "cache": {"redisUrl": redis_url, "sampleWindow": "0.1s"}},
        )
        app = optimizer_app(config, target=fleet, sample_usage=False)
        async with served(app, free_port()) as url:
            yield Running(url, admin(app))
    finally:
        await fleet.stop()


@pytest.mark.xdist_group("postgres-optimizer")
def test_the_optimizer_api(tmp_path: Path, small_database: str) -> None:
    config = settings(
        45,
        dictionaries={
            "services": {"values": ["shipment-service"]},
            "tables": {"values": ["shipments"]},
            "columns": {"values": ["customer_id", "status", "id"]},
        },
        parameters={
            **dictionary("services", "query.service", "body.service"),
            **dictionary("tables", "body.indexes[*].table"),
            **dictionary("columns", "body.indexes[*].columns[*]"),
        },
        operations=[
            accepts_or_422("GET", "/analysis/overview", "a timeRange outside 1m..31d"),
            accepts_or_422("POST", "/optimization/database", "a column the table lacks; descending not one per column"),
        ],
    )
    with (
        redis_server(tmp_path / "redis") as redis_url,
        in_background(lambda: optimizer(tmp_path, small_database, redis_url)) as running,
    ):
        result = fuzz(f"{running.url}/openapi.json", config, token=running.token)
    assert_clean(result)


# --- the chaos service ---------------------------------------------------------------------


@asynccontextmanager
async def chaos(tmp_path: Path, kube: FakeKube) -> AsyncIterator[Running]:
    """The chaos service on the fake Kubernetes API server: its faults are Chaos Mesh objects
    there, so that any fault the schema allows can really be injected."""
    client = ApiClient(Configuration(host=kube.url))
    target = KubernetesTarget(
        KubernetesTargetSettings(), default_min_replicas=1, default_max_replicas=10, api_client=client
    )
    try:
        config = ChaosSettings(
            state_dir=tmp_path,
            log_level="WARNING",
            model_server_url=f"http://127.0.0.1:{free_port()}",
            prometheus_url=f"http://127.0.0.1:{free_port()}",
            safety={"blastRadiusLimit": 100, "maxExperimentDuration": "2s"},
        )
        app = chaos_app(config, target=target)
        async with served(app, free_port()) as url:
            yield Running(url, admin(app))
        # The service has stopped: it aborted what was running and reverted every fault.
        assert await active_faults(target) == []
    finally:
        client.close()


def local_probes(probe_url: str) -> Any:
    """Every HTTP probe of a steady state goes to ``probe_url``, whatever was generated: the chaos
    service calls a probe's URL, and a generated one may name any host on the internet."""

    def rewrite(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
        state = case.body.get("steadyState") if isinstance(case.body, dict) else None
        probes = state.get("probes") if isinstance(state, dict) else None
        for probe in probes if isinstance(probes, list) else []:
            if isinstance(probe, dict) and "url" in probe:
                probe["url"] = probe_url

    return rewrite


@pytest.mark.xdist_group("chaos")
def test_the_chaos_api(tmp_path: Path) -> None:
    with fake_kube() as kube, ok_server() as probe_url:
        dependencies = {"tmsops.io/dependencies": '{"postgres": "db.default.svc:5432"}'}
        kube.add_deployment("cart", 4, {"app.kubernetes.io/part-of": "tms"}, dependencies)
        config = settings(
            20,
            dictionaries={
                "services": {"values": ["cart"]},
                "durations": {"values": ["500ms", "1s", "2s"]},  # within maxExperimentDuration
                "probes": {"values": [probe_url]},
            },
            parameters={
                **dictionary("services", "query.service", "body.target.service"),
                **dictionary("durations", "body.duration"),
                **dictionary("probes", "body.steadyState.probes[*].url", probability=1.0),
            },
            operations=[
                accepts_or_422(
                    "POST",
                    "/experiments",
                    "durations and timeouts in range, a selector's value for its mode, unique probe names, "
                    "an anomaly probe's window holding minPoints steps",
                ),
                accepts_or_422("POST", "/faults/inject", "the same rules, and the safety rules of a start"),
                accepts_or_422(
                    "POST",
                    "/experiments/{experiment_id}/start",
                    "a safety rule refuses the start",
                    # Starting an experiment on a service the target does not have is a 404 naming the
                    # service (unknown_service, the project's answer wherever a service is named), which
                    # ensure_resource_availability takes for the experiment itself being gone.
                    checks={"ensure_resource_availability": {"enabled": False}},
                ),
            ],
        )
        with before_every_call(local_probes(probe_url)), in_background(lambda: chaos(tmp_path, kube)) as running:
            result = fuzz(f"{running.url}/openapi.json", config, token=running.token)
        assert_clean(result)
        posts = kube.calls("POST")
        created = [call for call in posts if "chaos-mesh.org" in call.path and call.query.get("dryRun") != ["All"]]
        assert created, "no fault was injected: the fuzz never got past the safety rules"
        assert all(kube.objects(plural) == [] for plural in CHAOS_MESH_KINDS)


# --- the fleet's control API ---------------------------------------------------------------

HOST_WIDE = {"cpu_stress", "memory_growth", "disk_fill"}
MAX_TTL_S = 2.0


def bounded_faults(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
    """A fault injected through the fleet's API lasts at most 2 s, and a CPU, memory or disk fault is
    only a dry run: their schema allows 64 busy workers, a terabyte of memory or a full disk, on
    this machine, for up to a day."""
    if (case.method, case.path) != ("POST", "/faults") or not isinstance(case.body, dict):
        return
    fault = case.body.get("fault")
    if isinstance(fault, dict) and str(fault.get("type")) in HOST_WIDE:
        case.body["dryRun"] = True
    ttl = case.body.get("ttlS")
    if isinstance(ttl, int | float) and not isinstance(ttl, bool) and ttl > MAX_TTL_S:
        case.body["ttlS"] = MAX_TTL_S


@asynccontextmanager
async def fleet_api(tmp_path: Path) -> AsyncIterator[Running]:
    """The fleet's control API on an echo service with a data directory and a dependency."""
    async with tcp_echo() as database:
        echo = FleetService(
            command=ECHO,
            port=free_port(),
            max_replicas=3,
            data_dir=tmp_path / "echo-data",
            dependencies={"postgres": database},
            env={"DATABASE": "{dependency:postgres}"},
            stop_grace="2s",
        )
        fleet = FleetConfig(control_port=free_port(), services={"echo": echo}, restart_backoff_max="2s")
        app = fleet_app(FleetSettings(state_dir=tmp_path, log_level="WARNING", fleet=fleet))
        async with served(app, fleet.control_port) as url:
            yield Running(url, admin(app))
        # The fleet has stopped, reverting what was still in effect.
        assert await active_faults(app.state.fleet) == []


@pytest.mark.xdist_group("fleet")
def test_the_fleet_control_api(tmp_path: Path) -> None:
    config = settings(
        40,
        dictionaries={"services": {"values": ["echo"]}},
        parameters=dictionary("services", "path.name", "query.service", "body.service"),
        # DELETE /faults/{id} ends a fault and keeps it, ended, in GET /faults/{id}: the fault's
        # history, where use_after_free expects a 404.
        checks={"use_after_free": {"enabled": False}},
        operations=[
            accepts_or_422("PUT", "/services/{name}/replicas", "replicas outside minReplicas..maxReplicas"),
            accepts_or_422("POST", "/faults", "replicas that are not running replicas of the service"),
        ],
    )
    with before_every_call(bounded_faults), in_background(lambda: fleet_api(tmp_path)) as running:
        result = fuzz(f"{running.url}/openapi.json", config, token=running.token)
    assert_clean(result)
