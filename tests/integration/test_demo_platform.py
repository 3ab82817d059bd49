"""The demo's settings and its database guard: `tmsops up --demo` empties only its own database."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from support.tms_db import fresh_database

from tmsops.demo.platform import DemoBackends, prepare_database, write_demo_settings
from tmsops.settings import AutoscalerSettings, ChaosSettings, FleetSettings, OptimizerSettings, load_settings
from tmsops.up import demo_environment

pytestmark = pytest.mark.xdist_group("postgres-optimizer")


def url_of(dsn: str) -> str:
    params = conninfo_to_dict(dsn)
    return (
        f"postgresql://{params.get('user', 'postgres')}@{params['host']}:{params.get('port', 5432)}/{params['dbname']}"
    )


@pytest.fixture
def other_database() -> str:
    """Someone's database with a schema named like the demo's."""
    with fresh_database(extensions=()) as dsn:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute("CREATE SCHEMA tms; CREATE TABLE tms.orders (id int)")
        yield dsn


def tables_in_tms(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as connection:
        rows = connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'tms'").fetchall()
    return [row[0] for row in rows]


def test_a_dsn_naming_another_database_is_refused_and_nothing_is_dropped(other_database: str) -> None:
    with pytest.raises(ValueError, match="the demo's database must be 'tmsops_demo'"):
        prepare_database(url_of(other_database))
    assert tables_in_tms(other_database) == ["orders"]


def test_a_database_named_in_the_query_string_is_refused(other_database: str) -> None:
    sneaky = (
        url_of(other_database).rsplit("/", 1)[0] + f"/tmsops_demo?dbname={conninfo_to_dict(other_database)['dbname']}"
    )
    with pytest.raises(ValueError, match="must be 'tmsops_demo'"):
        prepare_database(sneaky)
    assert tables_in_tms(other_database) == ["orders"]


def test_the_demo_settings_load_and_point_the_optimizer_at_the_demo_database(tmp_path: Path) -> None:
    backends = DemoBackends("postgresql://postgres@127.0.0.1:5432/tmsops_demo", "redis://127.0.0.1:6379/0")
    path = write_demo_settings(backends, tmp_path / "state")
    fleet = load_settings(FleetSettings, path)
    shipment = fleet.fleet.services["shipment-service"]
    assert shipment.env["DATABASE_URL"] == "postgresql://postgres@{dependency:postgres}/tmsops_demo"
    assert shipment.dependencies == {"postgres": "127.0.0.1:5432", "redis": "127.0.0.1:6379"}
    assert load_settings(AutoscalerSettings, path).scaling.mode == "forecastAndScale"
    optimizer = load_settings(OptimizerSettings, path)
    database = optimizer.optimization.database
    assert database.dsn is not None and database.dsn.get_secret_value() == backends.postgres
    assert database.schemas == ["tms"]
    # the sample experiment's one tracking replica must be within the default 25 % blast radius
    safety = load_settings(ChaosSettings, path).safety
    assert fleet.fleet.services["tracking-service"].min_replicas * safety.blast_radius_limit >= 100


def test_without_backends_the_demo_runs_on_sqlite(tmp_path: Path) -> None:
    path = write_demo_settings(DemoBackends(None, None), tmp_path / "state")
    optimizer = load_settings(OptimizerSettings, path)
    shipment = load_settings(FleetSettings, path).fleet.services["shipment-service"]
    assert shipment.env["DATABASE_URL"] == "sqlite:///{dataDir}/shipments.db"
    assert optimizer.optimization.database.dsn is None


def test_the_demo_leaves_out_settings_overrides_from_the_shell() -> None:
    environ = {
        "TMSOPS_TARGET__KIND": "kubernetes",
        "TMSOPS_OPTIMIZATION__DATABASE__DSN": "postgresql://prod/tms",
        "TMSOPS_STATE_DIR": "/tmp/state",
        "TMSOPS_DEMO_FAULT_S": "15",
        "TMSOPS_SERVING_TRACKING_URI": "sqlite:///x.db",
        "PATH": "/usr/bin",
    }
    kept, dropped = demo_environment(environ)
    assert sorted(dropped) == ["TMSOPS_OPTIMIZATION__DATABASE__DSN", "TMSOPS_TARGET__KIND"]
    assert set(kept) == {"TMSOPS_STATE_DIR", "TMSOPS_DEMO_FAULT_S", "TMSOPS_SERVING_TRACKING_URI", "PATH"}
