"""Candidate indexes from the workload's shapes, the way a person would write them.

Per table of a read statement: each column it filters or joins on alone; all its equality
columns together (most selective first); those followed by one range column; and those
followed by the ORDER BY columns when the sort is on this table alone, so that the index
returns rows already sorted (a LIMIT then stops early). At most four columns; nothing an
existing btree already covers (its leading columns are the candidate's).
"""

from __future__ import annotations

from collections.abc import Iterable

from actuators.optimizer.database.catalog import Catalog
from actuators.optimizer.database.plans import Candidate
from actuators.optimizer.database.shape import QueryShape, SortKey
from actuators.optimizer.database.workload import Statement

MAX_COLUMNS = 4


def candidates(statements: Iterable[Statement], catalog: Catalog) -> list[Candidate]:
    found: dict[Candidate, None] = {}
    for statement in statements:
        if not statement.is_read:
            continue
        for table in sorted(statement.shape.table_names):
            if table in catalog.tables:
                for candidate in _for_table(statement.shape, table, catalog):
                    if catalog.covered(candidate.table, candidate.columns) is None:
                        found.setdefault(candidate)
    return list(found)


def _for_table(shape: QueryShape, table: str, catalog: Catalog) -> list[Candidate]:
    predicates = shape.predicates_on(table)
    distinct = catalog.tables[table].distinct
    equal = _unique(p.column for p in predicates if p.kind in ("eq", "null"))
    equal.sort(key=lambda column: -distinct.get(column, 0.0))
    ranges = _unique(p.column for p in predicates if p.kind == "range" and p.column not in equal)
    joins = _unique(p.column for p in predicates if p.kind == "join")
    found = [Candidate(table, (column,)) for column in _unique([*equal, *ranges, *joins])]
    if len(equal) > 1:
        found.append(Candidate(table, tuple(equal[:MAX_COLUMNS])))
    for column in ranges:
        if equal:
            found.append(Candidate(table, (*equal[: MAX_COLUMNS - 1], column)))
    sort = [key for key in shape.sort_on(table) if key.column not in equal]
    if sort:
        found.append(_sorted(table, equal, sort))
    return [candidate for candidate in found if 0 < len(candidate.columns) <= MAX_COLUMNS]


def _sorted(table: str, equal: list[str], sort: list[SortKey]) -> Candidate:
    """Equality columns then the sort keys; directions kept only when they are mixed (a btree reads backwards)."""
    lead = equal[: max(0, MAX_COLUMNS - len(sort))]
    columns = (*lead, *(key.column for key in sort))[:MAX_COLUMNS]
    directions = [key.descending for key in sort]
    mixed = len(set(directions)) > 1
    descending = (*(False,) * len(lead), *directions)[: len(columns)] if mixed else ()
    return Candidate(table, columns, descending)


def _unique(columns: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(columns))
