"""The settings of the demo platform that ``make run`` (``tmsops up --demo``) starts, and its database.

The demo is the whole platform on one machine, sped up: a day of traffic plays in ten minutes
(:data:`COMPRESS` times faster), so the autoscaler's forecast step, decision interval and
stabilisation window are shortened by the same factor, and it acts (``forecastAndScale``).
Replicas ask for 100 millicores, so a few dozen requests per second need several of them.

With a PostgreSQL server at :data:`DEFAULT_POSTGRES` (or ``TMSOPS_DEMO_POSTGRES``), the
shipment-service keeps its shipments in the ``tmsops_demo`` database, which is made afresh at
every start (so the missing index is there to be found each time), and the optimizer analyses
it. With a Redis at :data:`DEFAULT_REDIS` (or ``TMSOPS_DEMO_REDIS``) the shipment-service
caches lookups there. Without them the demo runs on SQLite, without the index or cache parts,
and says so.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

COMPRESS = 150.0  # 5-minute steps become 2 s: a day in 9.6 minutes
DEMO_DATABASE = "tmsops_demo"
DEMO_MARK = "tmsops demo: made by tmsops up --demo, emptied at every start"
DEFAULT_POSTGRES = f"postgresql://postgres@127.0.0.1:5432/{DEMO_DATABASE}"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
SHIPMENT_ROWS = 300_000
DEMO_EXTENSIONS = ("pg_stat_statements", "hypopg", "pg_qualstats")


@dataclass
class DemoBackends:
    """What the demo found to run on: a PostgreSQL DSN and a Redis URL, or None, with notes for the user."""

    postgres: str | None
    redis: str | None
    notes: list[str] = field(default_factory=list)


def find_backends(env: dict[str, str] | None = None) -> DemoBackends:
    """PostgreSQL and Redis for the demo, if they answer; the database is created and emptied."""
    env = dict(os.environ) if env is None else env
    backends = DemoBackends(None, None)
    postgres = env.get("TMSOPS_DEMO_POSTGRES", DEFAULT_POSTGRES)
    if postgres and _answers(postgres, 5432):
        import psycopg

        try:
            backends.notes.extend(prepare_database(postgres))
            backends.postgres = postgres
        except (psycopg.Error, ValueError) as error:
            where = _without_password(postgres)
            backends.notes.append(f"PostgreSQL at {where} is not used ({error}): shipments in SQLite instead")
    elif postgres:
        backends.notes.append(f"no PostgreSQL at {_without_password(postgres)}: shipments in SQLite, no index demo")
    redis = env.get("TMSOPS_DEMO_REDIS", DEFAULT_REDIS)
    if redis and _answers(redis, 6379):
        backends.redis = redis
    elif redis:
        backends.notes.append(f"no Redis at {_without_password(redis)}: the shipment-service runs without a cache")
    return backends


def prepare_database(dsn: str) -> list[str]:
    """Create the demo database if needed, drop the previous run's table, add the optimizer's extensions.

    Only ever in a database named :data:`DEMO_DATABASE` that this function created (it carries
    :data:`DEMO_MARK` as its comment): a DSN naming any other database is refused, so a mistyped
    ``TMSOPS_DEMO_POSTGRES`` cannot empty someone's schema.
    """
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    if params.get("dbname") != DEMO_DATABASE or "service" in params:
        raise ValueError(f"the demo's database must be {DEMO_DATABASE!r} (it is emptied at every start)")
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True, connect_timeout=5) as connection:
        found = connection.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (DEMO_DATABASE,)
        ).fetchone()
        if found is None:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DATABASE)))
            connection.execute(
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(DEMO_DATABASE), sql.Literal(DEMO_MARK))
            )
        elif found[0] != DEMO_MARK:
            raise ValueError(f"a database {DEMO_DATABASE!r} exists that `tmsops up --demo` did not make: not touched")
    notes = []
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as connection:
        if connection.info.dbname != DEMO_DATABASE:
            raise ValueError(f"connected to {connection.info.dbname!r}, not {DEMO_DATABASE!r}: not touched")
        connection.execute("DROP SCHEMA IF EXISTS tms CASCADE")
        for extension in DEMO_EXTENSIONS:
            try:
                connection.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(extension)))
            except psycopg.Error as error:
                notes.append(f"PostgreSQL extension {extension} unavailable ({error.diag.message_primary})")
        if connection.execute("SELECT to_regproc('pg_stat_statements_reset') IS NOT NULL").fetchone() == (True,):
            try:
                connection.execute(
                    "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database"
                    " WHERE datname = current_database()), 0)"
                )
            except psycopg.Error as error:
                notes.append(f"pg_stat_statements is not preloaded ({error.diag.message_primary})")
    return notes


def demo_settings(backends: DemoBackends, state_dir: Path) -> dict[str, Any]:
    """The demo's tmsops.yaml, as a mapping."""
    shipment: dict[str, Any] = {
        "command": ["{python}", "-m", "tmsops.demo.shipment"],
        "port": 8081,
        "dataDir": str(state_dir / "fleet" / "shipment-service"),
        "env": {"DATABASE_URL": "sqlite:///{dataDir}/shipments.db", "SEED_ROWS": str(SHIPMENT_ROWS)},
    }
    dependencies = {}
    if backends.postgres:
        parts = urlsplit(backends.postgres)
        dependencies["postgres"] = f"{parts.hostname}:{parts.port or 5432}"
        through_proxy = parts._replace(netloc=_netloc_with(parts, "{dependency:postgres}"))
        shipment["env"]["DATABASE_URL"] = urlunsplit(through_proxy)
    if backends.redis:
        parts = urlsplit(backends.redis)
        dependencies["redis"] = f"{parts.hostname}:{parts.port or 6379}"
        shipment["env"]["REDIS_URL"] = urlunsplit(parts._replace(netloc=_netloc_with(parts, "{dependency:redis}")))
    if dependencies:
        shipment["dependencies"] = dependencies
    services: dict[str, Any] = {
        "api-gateway": {
            "command": ["{python}", "-m", "tmsops.demo.gateway"],
            "port": 8080,
            "env": {"SHIPMENT_URL": "{service:shipment-service}", "TRACKING_URL": "{service:tracking-service}"},
        },
        "shipment-service": shipment,
        # four replicas at least: the sample experiment's one replica is then within the 25 % blast radius
        "tracking-service": {
            "command": ["{python}", "-m", "tmsops.demo.tracking"],
            "port": 8082,
            "replicas": 4,
            "minReplicas": 4,
        },
    }
    for service in services.values():
        service.update(maxReplicas=5, cpuRequest="100m", memoryRequest="128Mi", memoryLimit="512Mi")
    settings: dict[str, Any] = {
        "mode": "dev",
        "stateDir": str(state_dir),
        "fleet": {"services": services},
        "scaling": {
            "mode": "forecastAndScale",
            "interval": "4s",
            "forecastStep": f"{300 / COMPRESS:g}s",
            "stabilizationWindow": "20s",
            "startupTime": "5s",
            "maxReplicas": 5,
        },
        "safety": {"maxExperimentDuration": "5m", "denyServices": []},
        "optimization": {"database": {"service": "shipment-service", "minCalls": 5, "schemas": ["tms"]}},
    }
    if backends.postgres:
        settings["optimization"]["database"]["dsn"] = backends.postgres
    if backends.redis:
        settings["optimization"]["cache"] = {"redisUrl": backends.redis, "service": "shipment-service"}
    return settings


def write_demo_settings(backends: DemoBackends, state_dir: Path) -> Path:
    """Write the demo's settings to ``<state_dir>/demo/tmsops.yaml`` and return the path."""
    path = state_dir / "demo" / "tmsops.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Written by `tmsops up --demo` at every start; edit tmsops.yaml for your own settings.\n"
    path.write_text(header + yaml.safe_dump(demo_settings(backends, state_dir), sort_keys=False))
    return path


def _answers(url: str, default_port: int) -> bool:
    try:
        parts = urlsplit(url)
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except (OSError, ValueError):  # ValueError: a port that is not a number
        return False


def _netloc_with(parts: Any, address: str) -> str:
    credentials = parts.netloc.rpartition("@")[0]
    return f"{credentials}@{address}" if credentials else address


def _without_password(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
