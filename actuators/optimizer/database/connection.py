"""Connections to the PostgreSQL being optimised, and the errors that say what went wrong.

Every statement the optimizer sends carries the ``/* tmsops-optimizer */`` marker, so that
its own queries are left out of the workload it reads from pg_stat_statements.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tmsops.errors import PermanentError, TemporaryError

MARKER = "/* tmsops-optimizer */"
DSN_SETTING = "optimization.database.dsn"
REQUIRED_EXTENSIONS = ("pg_stat_statements", "hypopg")

Row = dict[str, Any]


class DatabaseNotConfigured(PermanentError):
    http_status = 422

    def __init__(self) -> None:
        super().__init__(f"no database to optimise: set {DSN_SETTING} (TMSOPS_OPTIMIZATION__DATABASE__DSN)")


class BadDsn(PermanentError):
    http_status = 422


class DatabaseUnavailable(TemporaryError):
    http_status = 503


class ExtensionMissing(PermanentError):
    """The database lacks an extension the optimizer needs; the message says how to add it."""

    http_status = 409


class StatementFailed(PermanentError):
    http_status = 409


class Database:
    """One PostgreSQL database, reached with ``dsn``; a fresh autocommit connection per unit of work."""

    def __init__(
        self, dsn: str, *, statement_timeout: timedelta = timedelta(seconds=60), schemas: Sequence[str] = ()
    ) -> None:
        try:
            self.conninfo = psycopg.conninfo.make_conninfo(dsn)
            parts = psycopg.conninfo.conninfo_to_dict(self.conninfo)
        except psycopg.ProgrammingError as error:
            raise BadDsn(f"{DSN_SETTING} is not a valid PostgreSQL connection string: {error}") from error
        self.name = str(parts.get("dbname") or parts.get("user") or "postgres")
        self.statement_timeout_ms = int(statement_timeout.total_seconds() * 1000)
        # schemas analysed besides the connection's search_path (where the extensions usually are)
        self.search_path = ", ".join('"' + schema.replace('"', '""') + '"' for schema in schemas)

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Session]:
        try:
            connection = await psycopg.AsyncConnection.connect(
                self.conninfo, autocommit=True, row_factory=dict_row, connect_timeout=5, application_name="tmsops"
            )
        except psycopg.OperationalError as error:
            raise DatabaseUnavailable(
                f"cannot connect to the database {self.name!r}: {_first_line(error)}", retry_after=5.0
            ) from error
        try:
            session = Session(connection)
            await session.execute(f"SET statement_timeout = {self.statement_timeout_ms}")
            if self.search_path:
                await session.execute(
                    "SELECT set_config('search_path', concat_ws(', ', %s::text,"
                    " nullif(current_setting('search_path'), '')), false)",
                    (self.search_path,),
                )
            yield session
        finally:
            await connection.close()

    async def check_extensions(self, session: Session) -> list[str]:
        """The required extensions missing from this database."""
        rows = await session.rows("SELECT extname FROM pg_extension")
        present = {row["extname"] for row in rows}
        return [name for name in REQUIRED_EXTENSIONS if name not in present]

    async def require_extensions(self, session: Session, needed: Sequence[str] = REQUIRED_EXTENSIONS) -> None:
        missing = [name for name in await self.check_extensions(session) if name in needed]
        if missing:
            commands = "; ".join(f"CREATE EXTENSION {name}" for name in missing)
            raise ExtensionMissing(
                f"the database {self.name!r} lacks {', '.join(missing)}: run {commands} "
                "(pg_stat_statements must also be in shared_preload_libraries)",
                details={"missing": missing},
            )


class Session:
    """An autocommit connection; statements are marked as the optimizer's own."""

    def __init__(self, connection: psycopg.AsyncConnection[Row]) -> None:
        self.connection = connection

    async def rows(self, sql: str, params: Sequence[Any] | None = None) -> list[Row]:
        with _wrapped(sql):
            async with self.connection.cursor() as cursor:
                await cursor.execute(f"{MARKER} {sql}", params)
                return await cursor.fetchall() if cursor.description else []

    async def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        with _wrapped(sql):
            await self.connection.execute(f"{MARKER} {sql}", params)

    async def raw_rows(self, sql: str, params: Sequence[Any]) -> list[Row]:
        """Run ``sql`` with PostgreSQL's own ``$n`` placeholders (as pg_stat_statements shows them)."""
        with _wrapped(sql):
            async with psycopg.AsyncRawCursor(self.connection, row_factory=dict_row) as cursor:
                await cursor.execute(f"{MARKER} {sql}", params)
                return await cursor.fetchall() if cursor.description else []


@contextmanager
def _wrapped(sql: str) -> Iterator[None]:
    """Database errors by SQLSTATE: a lost connection or a server shutting down is DatabaseUnavailable
    (temporary); an extension created but not preloaded is ExtensionMissing; anything else (a timeout,
    a lock not granted, a refused statement) is StatementFailed, with the server's message."""
    try:
        yield
    except psycopg.Error as error:
        state = error.sqlstate or ""
        message = _first_line(error)
        if state.startswith("08") or state in ("57P01", "57P02", "57P03") or (not state and error.pgconn is None):
            raise DatabaseUnavailable(f"the database connection failed: {message}") from error
        if "shared_preload_libraries" in message:
            raise ExtensionMissing(f"{message}: add it to shared_preload_libraries and restart PostgreSQL") from error
        raise StatementFailed(f"{message} (in: {sql[:200]})") from error


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
