"""Indexes that cost without serving (PgHero's rules): unused, duplicate (covered by another), invalid."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from actuators.optimizer.database.catalog import Catalog, Index
from actuators.optimizer.database.plans import quoted


class IndexFinding(BaseModel):
    kind: Literal["unused", "duplicate", "invalid"]
    index: str
    table: str
    size_bytes: int
    reason: str
    drop_sql: str


def index_findings(catalog: Catalog) -> list[IndexFinding]:
    found = [_invalid(index) for index in catalog.indexes if not index.valid]
    for index in catalog.indexes:
        if not index.valid or index.primary or index.unique:
            continue
        wider = next((other for other in catalog.indexes_on(index.table) if _covers(other, index)), None)
        if wider is not None:
            found.append(_finding("duplicate", index, f"{wider.name} on ({', '.join(wider.columns)}) covers it"))
        elif index.scans == 0:
            found.append(_finding("unused", index, "no scan since the statistics were last reset"))
    return sorted(found, key=lambda finding: -finding.size_bytes)


def _covers(other: Index, index: Index) -> bool:
    if other.name == index.name or other.partial or not other.valid or other.method != index.method:
        return False
    if not index.columns or not other.covers(index.columns):
        return False
    # Of two identical indexes, report only one: the one that is not unique, or the later name.
    return len(other.columns) > len(index.columns) or other.unique or other.name < index.name


def _invalid(index: Index) -> IndexFinding:
    return _finding("invalid", index, "left by a failed CREATE INDEX CONCURRENTLY; the planner ignores it")


def _finding(kind: Literal["unused", "duplicate", "invalid"], index: Index, reason: str) -> IndexFinding:
    return IndexFinding(
        kind=kind,
        index=index.name,
        table=index.table,
        size_bytes=index.size_bytes,
        reason=reason,
        drop_sql=f"DROP INDEX CONCURRENTLY IF EXISTS {quoted(index.name)}",
    )
