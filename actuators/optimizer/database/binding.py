"""Real parameter values for normalised statements, so they can be planned and timed.

pg_stat_statements keeps ``WHERE customer_id = $1 ... LIMIT $2``, not the values. A parameter
compared with a column gets the constants the workload itself used there, as pg_qualstats
recorded them for that statement (when the extension is in the database); otherwise values
drawn from the column (a block sample of the table, so the draw costs little even on a large
table), which can differ from what the application asks for. A LIMIT gets the rows the
statement returned per call; an OFFSET gets 0. A statement with a parameter of any other kind cannot be bound
and is left out of plans and measurements (and said to be so).
"""

from __future__ import annotations

import logging
import random
import re
from collections import defaultdict
from dataclasses import dataclass

from psycopg import sql

from actuators.optimizer.database.catalog import Catalog
from actuators.optimizer.database.connection import Session, StatementFailed
from actuators.optimizer.database.workload import Statement

Binding = list[str | None]
log = logging.getLogger(__name__)
Observed = dict[tuple[int, str, str], list[str]]  # (queryid, table, column) -> constants, repeated by use

_OBSERVED = """
SELECT q.queryid, c.relname AS "table", a.attname AS "column", q.constvalue, q.occurences
FROM pg_qualstats() q
JOIN pg_class c ON c.oid = q.lrelid
JOIN pg_attribute a ON a.attrelid = q.lrelid AND a.attnum = q.lattnum
WHERE q.constvalue IS NOT NULL AND q.queryid IS NOT NULL
  AND q.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
_QUOTED = re.compile(r"^'((?:[^']|'')*)'::[\w .\[\]\"]+$", re.DOTALL)
_NUMBER = re.compile(r"^\(?(-?[0-9][0-9.e+-]*)\)?::[\w .\[\]\"]+$")


@dataclass
class Bound:
    """A statement with the parameter values it is planned and timed with (one list per execution)."""

    statement: Statement
    bindings: list[Binding]


async def bind(
    session: Session, statements: list[Statement], catalog: Catalog, *, per_statement: int = 5, seed: int = 7
) -> tuple[list[Bound], list[Statement]]:
    """Bindings for each statement; the second list holds those that could not be bound."""
    draw = random.Random(seed)
    pools: dict[tuple[str, str], list[str]] = {}
    observed = await observed_constants(session)
    bound, unbound = [], []
    for statement in statements:
        bindings = await _bindings(session, statement, catalog, per_statement, pools, observed, draw)
        if bindings is None:
            unbound.append(statement)
        else:
            bound.append(Bound(statement, bindings))
    return bound, unbound


async def _bindings(
    session: Session,
    statement: Statement,
    catalog: Catalog,
    count: int,
    pools: dict[tuple[str, str], list[str]],
    observed: Observed,
    draw: random.Random,
) -> list[Binding] | None:
    params = statement.shape.params
    highest = max(params, default=0)
    if set(params) != set(range(1, highest + 1)):
        return None  # a parameter outside WHERE, LIMIT and OFFSET
    choices: list[list[str | None]] = []
    for number in range(1, highest + 1):
        use = params[number]
        if use.role == "limit":
            choices.append([str(max(1, round(statement.rows_per_call)))])
        elif use.role == "offset":
            choices.append(["0"])
        elif use.role == "column" and (statement.queryid, use.table, use.column) in observed:
            choices.append(list[str | None](observed[(statement.queryid, str(use.table), str(use.column))]))
        elif use.role == "column" and use.table in catalog.tables and use.column is not None:
            key = (use.table, use.column)
            if key not in pools:
                pools[key] = await _sample_column(session, use.table, use.column, catalog.tables[use.table].rows)
            if not pools[key]:
                return None
            choices.append(list(pools[key]))
        else:
            return None
    return [[draw.choice(values) for values in choices] for _ in range(count)] if choices else [[]]


async def observed_constants(session: Session) -> Observed:
    """The constants each statement compared each column with, from pg_qualstats (empty without it)."""
    rows = await session.rows("SELECT 1 AS present FROM pg_extension WHERE extname = 'pg_qualstats'")
    if not rows:
        return {}
    found: Observed = defaultdict(list)
    try:
        rows = await session.rows(_OBSERVED)
    except StatementFailed as error:  # created but not preloaded, for one: sample the columns instead
        log.info("pg_qualstats unreadable, parameters sampled from the columns: %s", error.message)
        return {}
    for row in rows:
        value = constant_text(str(row["constvalue"]))
        if value is not None:
            key = (int(row["queryid"]), str(row["table"]), str(row["column"]))
            found[key] += [value] * min(max(int(row["occurences"]), 1), 50)
    return dict(found)


def constant_text(constant: str) -> str | None:
    """``'exception'::text`` -> ``exception``, ``42::integer`` -> ``42``; ``None`` for anything else."""
    quoted = _QUOTED.match(constant)
    if quoted:
        return quoted.group(1).replace("''", "'")
    number = _NUMBER.match(constant)
    return number.group(1) if number else None


async def _sample_column(session: Session, table: str, column: str, rows: float, size: int = 200) -> list[str]:
    """Up to ``size`` non-null values of ``table.column``, as text (PostgreSQL casts them back)."""
    percent = min(100.0, max(0.01, 100.0 * size * 4 / max(rows, 1.0)))
    query = sql.SQL(
        "SELECT {column}::text AS value FROM {table} TABLESAMPLE SYSTEM ({percent}) "
        "WHERE {column} IS NOT NULL LIMIT {size}"
    ).format(
        column=sql.Identifier(column), table=sql.Identifier(table), percent=sql.Literal(percent), size=sql.Literal(size)
    )
    values = [row["value"] for row in await session.rows(query.as_string())]
    if len(values) < 10:
        fallback = sql.SQL(
            "SELECT {column}::text AS value FROM {table} WHERE {column} IS NOT NULL LIMIT {size}"
        ).format(column=sql.Identifier(column), table=sql.Identifier(table), size=sql.Literal(size))
        values = [row["value"] for row in await session.rows(fallback.as_string())]
    return values
