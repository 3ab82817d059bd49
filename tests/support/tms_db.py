"""A fresh PostgreSQL database per test module, with the optimizer's extensions and a small TMS dataset."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import psycopg
from psycopg.conninfo import make_conninfo

from support.services import require_service
from tmsops.demo.tms_database import Workload, load

ADMIN_DSN = os.environ.get("TMSOPS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
EXTENSIONS = ("pg_stat_statements", "hypopg", "pg_qualstats")
CUSTOMERS, SHIPMENTS = 3_000, 30_000


def unavailable(reason: str) -> NoReturn:
    require_service("PostgreSQL with the optimizer's extensions", reason)


@contextmanager
def fresh_database(extensions: tuple[str, ...] = EXTENSIONS) -> Iterator[str]:
    """An empty database with ``extensions``; dropped afterwards. Yields its DSN."""
    name = f"tmsops_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as error:
        unavailable(str(error).strip())
    dsn = make_conninfo(ADMIN_DSN, dbname=name)
    try:
        with psycopg.connect(dsn, autocommit=True) as connection:
            for extension in extensions:
                try:
                    connection.execute(f"CREATE EXTENSION IF NOT EXISTS {extension}")
                except psycopg.Error as error:
                    unavailable(f"CREATE EXTENSION {extension}: {str(error).strip()}")
            if "pg_stat_statements" in extensions:
                try:
                    connection.execute("SELECT 1 FROM pg_stat_statements LIMIT 1")
                except psycopg.Error as error:
                    unavailable(f"pg_stat_statements is not preloaded: {str(error).strip()}")
        yield dsn
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_workload(dsn: str, *, reads: int = 150, writes: int = 600) -> None:
    """The TMS application's reads and writes, as pg_stat_statements and pg_qualstats will see them."""
    workload = Workload(CUSTOMERS, SHIPMENTS)
    with psycopg.connect(dsn, autocommit=True) as connection:
        # pg_qualstats keeps a fixed number of entries, for every database, and the databases of
        # earlier tests fill it: start empty (the optimizer's tests run one at a time, in one group).
        connection.execute("SELECT pg_qualstats_reset()")
        workload.run_reads(connection, reads)
        workload.run_writes(connection, 60.0, limit=writes)  # a count, not a time: the same advice on any machine


@contextmanager
def tms_database() -> Iterator[str]:
    """A loaded TMS database (about 120 000 rows, primary keys only) after a run of its workload."""
    with fresh_database() as dsn:
        load(dsn, customers=CUSTOMERS, shipments=SHIPMENTS)
        run_workload(dsn)
        yield dsn
