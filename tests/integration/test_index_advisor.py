"""Index advice and measured apply against a real PostgreSQL (pg_stat_statements, HypoPG, pg_qualstats)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from support.net import free_port
from support.tms_db import fresh_database, run_workload, tms_database

from actuators.optimizer.database.advisor import advise
from actuators.optimizer.database.apply import AlreadyCovered, UnknownColumn, UnknownTable, apply_index, index_name
from actuators.optimizer.database.connection import (
    BadDsn,
    Database,
    DatabaseUnavailable,
    ExtensionMissing,
    StatementFailed,
)
from actuators.optimizer.database.plans import Candidate
from actuators.optimizer.journal import Kind, OptimizationJournal, Status
from tmsops.settings import DatabaseOptimization
from tmsops.state import make_engine

pytestmark = [pytest.mark.anyio, pytest.mark.xdist_group("postgres-optimizer")]
POLICY = DatabaseOptimization()


@pytest.fixture(scope="module")
def tms_dsn() -> Iterator[str]:
    with tms_database() as dsn:
        yield dsn


@pytest.fixture
def journal(tmp_path: Path) -> OptimizationJournal:
    return OptimizationJournal(make_engine(f"sqlite:///{tmp_path / 'journal.db'}"))


def indexes(dsn: str) -> dict[str, bool]:
    """Index name -> valid, for the test database's tables."""
    with psycopg.connect(dsn) as connection:
        rows = connection.execute(
            "SELECT c.relname, x.indisvalid FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
        ).fetchall()
    return {name: valid for name, valid in rows}


async def test_the_advice_covers_the_workloads_filters_joins_and_sorts_and_nothing_a_key_covers(tms_dsn: str) -> None:
    advice = await advise(Database(tms_dsn), POLICY)

    recommended = {(item.table, tuple(item.columns)) for item in advice.recommendations}
    assert ("tracking_events", ("shipment_id",)) in recommended
    assert any(table == "shipments" and columns[0] == "customer_id" for table, columns in recommended)
    assert ("shipments", ("status", "created_at")) in recommended  # the constants the workload used: 'exception'
    assert not any(columns == ("id",) for _, columns in recommended)  # primary keys already serve id
    assert advice.read_cost_after < advice.read_cost_before / 5
    for item in advice.recommendations:
        assert item.estimated_saving_pct > 0 and item.queries and item.estimated_size_bytes
        assert all(gain.cost_after < gain.cost_before for gain in item.queries)
        assert item.definition.startswith("CREATE INDEX CONCURRENTLY")
    assert advice.slow_queries and advice.slow_queries[0].plan is not None
    assert advice.unbound_statements == []


async def test_a_recommended_index_is_kept_with_its_measured_gain(tms_dsn: str, journal: OptimizationJournal) -> None:
    candidate = Candidate("tracking_events", ("shipment_id",))
    try:
        entry = await apply_index(Database(tms_dsn), journal, POLICY, candidate, service="shipment-service")

        assert entry.status == Status.KEPT and entry.kind == Kind.INDEX
        assert entry.before is not None and entry.after is not None
        assert entry.after["weighted_ms"] < entry.before["weighted_ms"] * (1 - POLICY.min_gain)
        assert entry.after["used_by"], "the statements whose plans read it"
        assert indexes(tms_dsn)[index_name(candidate)] is True
        assert entry.undo["sql"].startswith("DROP INDEX CONCURRENTLY")
    finally:
        with psycopg.connect(tms_dsn, autocommit=True) as connection:
            connection.execute(f'DROP INDEX IF EXISTS "{index_name(candidate)}"')


async def test_a_useless_index_is_rolled_back_by_itself(tms_dsn: str, journal: OptimizationJournal) -> None:
    useless = Candidate("customers", ("region",))  # no statement of the workload filters on region

    entry = await apply_index(Database(tms_dsn), journal, POLICY, useless, service="shipment-service")

    assert entry.status == Status.ROLLED_BACK
    assert "no statement of the workload plans to read it" in entry.reason
    assert entry.after is not None and entry.after["used_by"] == []
    assert entry.after is not None and entry.after["gain"] < POLICY.min_gain
    assert index_name(useless) not in indexes(tms_dsn)
    assert [item.status for item in journal.recent()] == [Status.ROLLED_BACK]


async def test_a_dry_run_journals_the_plan_and_creates_nothing(tms_dsn: str, journal: OptimizationJournal) -> None:
    before = indexes(tms_dsn)
    candidate = Candidate("shipments", ("customer_id", "created_at"))

    entry = await apply_index(Database(tms_dsn), journal, POLICY, candidate, service="shipment-service", dry_run=True)

    assert entry.status == Status.DRY_RUN and entry.change["sql"].startswith("CREATE INDEX CONCURRENTLY")
    assert entry.change["queries"], "the statements the index would serve"
    assert indexes(tms_dsn) == before


async def test_bad_index_requests_name_what_is_wrong(tms_dsn: str, journal: OptimizationJournal) -> None:
    database = Database(tms_dsn)
    with pytest.raises(UnknownTable, match="parcels"):
        await apply_index(database, journal, POLICY, Candidate("parcels", ("id",)), service="s")
    with pytest.raises(UnknownColumn, match="colour"):
        await apply_index(database, journal, POLICY, Candidate("shipments", ("colour",)), service="s")
    with pytest.raises(AlreadyCovered, match="shipments_pkey"):
        await apply_index(database, journal, POLICY, Candidate("shipments", ("id",)), service="s")
    assert journal.recent() == []


async def test_duplicate_unused_and_invalid_indexes_are_found() -> None:
    with fresh_database() as dsn:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute("CREATE TABLE parcels (id bigint PRIMARY KEY, depot int, weight int, code int)")
            connection.execute("INSERT INTO parcels SELECT g, g % 50, g % 7, g FROM generate_series(1, 2000) g")
            connection.execute("CREATE INDEX parcels_depot ON parcels (depot)")
            connection.execute("CREATE INDEX parcels_depot_weight ON parcels (depot, weight)")
            connection.execute("CREATE INDEX parcels_code ON parcels (code)")
            connection.execute("INSERT INTO parcels VALUES (2001, 1, 1, 1)")
            with pytest.raises(psycopg.errors.UniqueViolation):
                connection.execute("CREATE UNIQUE INDEX CONCURRENTLY parcels_code_unique ON parcels (code)")
            connection.execute("SELECT * FROM parcels WHERE depot = 3 AND weight = 2").fetchall()
            connection.execute("ANALYZE parcels")
        advice = await advise(Database(dsn), POLICY)

    found = {finding.index: finding for finding in advice.findings}
    assert found["parcels_depot"].kind == "duplicate" and "parcels_depot_weight" in found["parcels_depot"].reason
    assert found["parcels_code"].kind == "unused"
    assert found["parcels_code_unique"].kind == "invalid"
    assert "parcels_pkey" not in found
    assert found["parcels_code"].drop_sql == 'DROP INDEX CONCURRENTLY IF EXISTS "parcels_code"'


async def test_a_workload_served_by_primary_keys_gets_no_new_index() -> None:
    with fresh_database() as dsn:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute("CREATE TABLE accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))")
            connection.execute("INSERT INTO accounts SELECT g, g % 10, 0, '' FROM generate_series(1, 50000) g")
            connection.execute("ANALYZE accounts")
            for aid in range(1, 400):
                connection.execute("UPDATE accounts SET abalance = abalance + %s WHERE aid = %s", (aid, aid))
                connection.execute("SELECT abalance FROM accounts WHERE aid = %s", (aid,)).fetchall()
        advice = await advise(Database(dsn), POLICY)

    assert advice.statements >= 2 and advice.read_statements >= 1
    assert advice.recommendations == []


async def test_database_errors_are_typed_and_say_what_to_do() -> None:
    with pytest.raises(BadDsn, match=r"optimization\.database\.dsn"):
        Database("host=127.0.0.1 port=notaport = =")
    with pytest.raises(DatabaseUnavailable) as down:
        await advise(Database(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"), POLICY)
    assert down.value.retryable and down.value.http_status == 503
    with fresh_database(extensions=()) as bare, pytest.raises(ExtensionMissing) as missing:
        await advise(Database(bare), POLICY)
    assert missing.value.http_status == 409
    assert "CREATE EXTENSION pg_stat_statements" in missing.value.message
    assert "CREATE EXTENSION hypopg" in missing.value.message


async def test_the_workload_is_read_from_this_database_only() -> None:
    """Statements another database ran do not appear, nor the optimizer's own queries."""
    with tms_database() as first, fresh_database() as second:
        with psycopg.connect(second, autocommit=True) as connection:
            connection.execute("CREATE TABLE shipments (id bigint PRIMARY KEY, customer_id bigint)")
        run_workload(first, reads=30, writes=50)
        advice = await advise(Database(second), POLICY)
    assert advice.statements == 0  # CREATE TABLE is a utility statement; the advisor's own queries are marked
    assert advice.recommendations == []


async def test_timing_runs_statements_read_only_so_a_select_with_side_effects_writes_nothing(
    journal: OptimizationJournal,
) -> None:
    with fresh_database() as dsn:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute("CREATE TABLE parcels (id bigint PRIMARY KEY, depot int NOT NULL)")
            connection.execute("INSERT INTO parcels SELECT g, g % 500 FROM generate_series(1, 20000) g")
            connection.execute("CREATE TABLE seen (at timestamptz)")
            connection.execute(
                "CREATE FUNCTION note_seen() RETURNS int LANGUAGE sql AS 'INSERT INTO seen VALUES (now()) RETURNING 1'"
            )
            connection.execute("ANALYZE parcels")
            for depot in range(20):
                connection.execute("SELECT count(*) FROM parcels WHERE depot = %s", (depot,)).fetchall()
                connection.execute("SELECT note_seen() FROM parcels WHERE depot = %s LIMIT 1", (depot,)).fetchall()
            connection.execute("TRUNCATE seen")

        entry = await apply_index(Database(dsn), journal, POLICY, Candidate("parcels", ("depot",)), service="s")

        with psycopg.connect(dsn) as connection:
            assert connection.execute("SELECT count(*) FROM seen").fetchone() == (0,)
        assert entry.status == Status.KEPT  # the count(*) statement was timed and is served by the index
        assert entry.before is not None and len([key for key in entry.before if key.lstrip("-").isdigit()]) == 1


async def test_a_build_that_cannot_get_its_lock_fails_cleanly_and_leaves_no_index(
    tms_dsn: str, journal: OptimizationJournal
) -> None:
    candidate = Candidate("shipments", ("origin",))
    policy = DatabaseOptimization(lock_timeout="200ms")
    with psycopg.connect(tms_dsn) as blocker:  # an open transaction holding a lock the build needs
        blocker.execute("LOCK TABLE shipments IN SHARE ROW EXCLUSIVE MODE")
        with pytest.raises(StatementFailed, match="lock"):
            await apply_index(Database(tms_dsn), journal, policy, candidate, service="shipment-service")
        blocker.rollback()
    [entry] = journal.recent()
    assert entry.status == Status.FAILED and "cleaned up" in entry.reason
    assert index_name(candidate) not in indexes(tms_dsn)
