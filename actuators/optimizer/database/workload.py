"""The workload, as pg_stat_statements saw it: each normalised statement with its calls, time and rows.

Only this database's top-level statements count, without the optimizer's own (marked) queries,
utility commands or catalog reads. Parameters appear as ``$1``, ``$2``...: :mod:`binding`
gives them real values before a statement is planned or run.
"""

from __future__ import annotations

from dataclasses import dataclass

from actuators.optimizer.database.catalog import Catalog
from actuators.optimizer.database.connection import MARKER, Session
from actuators.optimizer.database.shape import QueryShape, parse, resolve

_STATEMENTS = """
SELECT queryid, query, calls, total_exec_time AS total_ms, mean_exec_time AS mean_ms, rows
FROM pg_stat_statements s
JOIN pg_database d ON d.oid = s.dbid AND d.datname = current_database()
WHERE s.toplevel AND s.calls >= %s AND s.query NOT LIKE %s
ORDER BY s.total_exec_time DESC
LIMIT %s
"""

_SKIPPED_PREFIXES = ("explain", "set ", "show ", "begin", "commit", "rollback", "vacuum", "analyze", "create ", "drop ")
_CATALOG_WORDS = ("pg_catalog", "pg_stat", "pg_class", "pg_index", "information_schema", "hypopg", "pg_qualstats")


@dataclass
class Statement:
    queryid: int
    query: str
    calls: int
    total_ms: float
    mean_ms: float
    rows: int
    shape: QueryShape

    @property
    def rows_per_call(self) -> float:
        return self.rows / self.calls if self.calls else 0.0

    @property
    def is_read(self) -> bool:
        return self.shape.verb == "select" and bool(self.shape.tables)


async def capture(session: Session, catalog: Catalog, *, min_calls: int = 1, limit: int = 500) -> list[Statement]:
    """The heaviest statements (by total time) called at least ``min_calls`` times."""
    rows = await session.rows(_STATEMENTS, (min_calls, f"{MARKER}%", limit))
    statements = []
    for row in rows:
        query = str(row["query"])
        if _skipped(query):
            continue
        shape = parse(query)
        if shape is None or shape.verb == "other":
            continue
        statements.append(
            Statement(
                queryid=int(row["queryid"]),
                query=query,
                calls=int(row["calls"]),
                total_ms=float(row["total_ms"]),
                mean_ms=float(row["mean_ms"]),
                rows=int(row["rows"]),
                shape=resolve(shape, catalog.columns_of()),
            )
        )
    return statements


async def reset(session: Session) -> None:
    """Forget the statistics (a fresh capture window), as ``pg_stat_statements_reset()`` does."""
    await session.rows("SELECT pg_stat_statements_reset()")


def _skipped(query: str) -> bool:
    text = query.lstrip().lower()
    return text.startswith(_SKIPPED_PREFIXES) or any(word in text for word in _CATALOG_WORDS)
