"""Plans and timings of bound statements: the planner's cost (with or without hypothetical
indexes, HypoPG) and the measured execution time on the real server."""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from actuators.optimizer.database.binding import Binding, Bound
from actuators.optimizer.database.connection import Session


@dataclass(frozen=True)
class Candidate:
    """A btree index: ``table`` on ``columns``, each ascending unless in ``descending``."""

    table: str
    columns: tuple[str, ...]
    descending: tuple[bool, ...] = ()

    def column_list(self) -> str:
        directions = self.descending or (False,) * len(self.columns)
        return ", ".join(
            quoted(name) + (" DESC" if desc else "") for name, desc in zip(self.columns, directions, strict=True)
        )

    def definition(self, name: str | None = None, *, concurrently: bool = False) -> str:
        how = "CONCURRENTLY " if concurrently else ""
        called = f"{quoted(name)} " if name else ""
        return f"CREATE INDEX {how}{called}ON {quoted(self.table)} USING btree ({self.column_list()})"

    @property
    def label(self) -> str:
        return f"{self.table}({self.column_list()})"


async def plan(session: Session, query: str, binding: Binding) -> dict[str, Any]:
    [row] = await session.raw_rows(f"EXPLAIN (FORMAT JSON) {query}", binding)
    top: dict[str, Any] = row["QUERY PLAN"][0]["Plan"]
    return top


async def cost(session: Session, bound: Bound) -> float:
    """The planner's mean total cost over the statement's bindings."""
    costs = [float((await plan(session, bound.statement.query, binding))["Total Cost"]) for binding in bound.bindings]
    return statistics.fmean(costs)


async def costs(session: Session, bounds: Sequence[Bound]) -> dict[int, float]:
    return {bound.statement.queryid: await cost(session, bound) for bound in bounds}


async def timed(session: Session, bound: Bound, *, repeats: int = 3) -> float:
    """The median server-side execution time, ms, over every binding run ``repeats`` times after a warm-up."""
    times = []
    for binding in bound.bindings:
        await _execution_ms(session, bound.statement.query, binding)
        times += [await _execution_ms(session, bound.statement.query, binding) for _ in range(repeats)]
    return statistics.median(times)


async def _execution_ms(session: Session, query: str, binding: Binding) -> float:
    [row] = await session.raw_rows(f"EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {query}", binding)
    return float(row["QUERY PLAN"][0]["Execution Time"])


@asynccontextmanager
async def hypothetical(session: Session, candidates: Sequence[Candidate]) -> AsyncIterator[None]:
    """``candidates`` exist for the planner (HypoPG) in this session only, until the block ends."""
    created = []
    try:
        for candidate in candidates:
            rows = await session.rows("SELECT indexrelid FROM hypopg_create_index(%s)", (candidate.definition(),))
            created.append(int(rows[0]["indexrelid"]))
        yield
    finally:
        for oid in created:
            await session.rows("SELECT hypopg_drop_index(%s)", (oid,))


def uses_index(node: dict[str, Any]) -> list[str]:
    """The names of the indexes a plan reads."""
    names = [str(node["Index Name"])] if "Index Name" in node else []
    for child in node.get("Plans", ()):
        names += uses_index(child)
    return names


def quoted(name: str) -> str:
    """``name`` as a PostgreSQL identifier, double quotes doubled."""
    return '"' + name.replace('"', '""') + '"'
