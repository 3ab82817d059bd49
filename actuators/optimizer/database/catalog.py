"""What the database already has: tables with their columns and write counts, indexes with their use."""

from __future__ import annotations

from dataclasses import dataclass, field

from actuators.optimizer.database.connection import Session


@dataclass(frozen=True)
class Index:
    name: str
    table: str
    columns: tuple[str, ...]  # empty for an expression index
    unique: bool
    primary: bool
    valid: bool
    partial: bool
    method: str
    size_bytes: int
    scans: int
    definition: str

    def covers(self, columns: tuple[str, ...]) -> bool:
        """A plain btree whose leading columns are ``columns`` serves everything an index on them would."""
        return (
            self.method == "btree"
            and self.valid
            and not self.partial
            and bool(self.columns)
            and self.columns[: len(columns)] == columns
        )


@dataclass
class Table:
    name: str
    columns: set[str]
    rows: float
    inserts: int
    updates: int
    deletes: int
    seq_scans: int
    size_bytes: int
    distinct: dict[str, float] = field(default_factory=dict)  # column -> estimated distinct values

    @property
    def writes(self) -> int:
        return self.inserts + self.updates + self.deletes


@dataclass
class Catalog:
    tables: dict[str, Table]
    indexes: list[Index]

    def indexes_on(self, table: str) -> list[Index]:
        return [index for index in self.indexes if index.table == table]

    def covered(self, table: str, columns: tuple[str, ...]) -> Index | None:
        return next((index for index in self.indexes_on(table) if index.covers(columns)), None)

    def columns_of(self) -> dict[str, set[str]]:
        return {name: table.columns for name, table in self.tables.items()}


_TABLES = """
SELECT c.relname AS name, c.reltuples AS rows, pg_total_relation_size(c.oid) AS size_bytes,
       coalesce(s.n_tup_ins, 0) AS inserts, coalesce(s.n_tup_upd, 0) AS updates,
       coalesce(s.n_tup_del, 0) AS deletes, coalesce(s.seq_scan, 0) AS seq_scans,
       array_agg(a.attname::text ORDER BY a.attnum) AS columns
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(current_schemas(false))
GROUP BY c.oid, c.relname, c.reltuples, s.n_tup_ins, s.n_tup_upd, s.n_tup_del, s.seq_scan
"""

_INDEXES = """
SELECT i.relname AS name, t.relname AS "table", x.indisunique AS unique, x.indisprimary AS primary,
       x.indisvalid AS valid, x.indpred IS NOT NULL AS partial, am.amname AS method,
       pg_relation_size(i.oid) AS size_bytes, coalesce(s.idx_scan, 0) AS scans,
       pg_get_indexdef(i.oid) AS definition,
       ARRAY(SELECT CASE WHEN k.attnum = 0 THEN NULL ELSE a.attname::text END
             FROM unnest(x.indkey) WITH ORDINALITY AS k(attnum, position)
             LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
             ORDER BY k.position) AS columns
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_am am ON am.oid = i.relam
LEFT JOIN pg_stat_user_indexes s ON s.indexrelid = i.oid
WHERE n.nspname = ANY(current_schemas(false))
"""

_DISTINCT = """
SELECT tablename AS "table", attname AS column, n_distinct
FROM pg_stats WHERE schemaname = ANY(current_schemas(false))
"""


async def read_catalog(session: Session) -> Catalog:
    tables = {
        row["name"]: Table(
            name=row["name"],
            columns=set(row["columns"]),
            rows=max(float(row["rows"]), 0.0),
            inserts=int(row["inserts"]),
            updates=int(row["updates"]),
            deletes=int(row["deletes"]),
            seq_scans=int(row["seq_scans"]),
            size_bytes=int(row["size_bytes"]),
        )
        for row in await session.rows(_TABLES)
    }
    for row in await session.rows(_DISTINCT):
        table = tables.get(row["table"])
        if table is not None:
            distinct = float(row["n_distinct"])
            table.distinct[row["column"]] = distinct if distinct >= 0 else -distinct * max(table.rows, 1.0)
    indexes = [
        Index(
            name=row["name"],
            table=row["table"],
            columns=tuple(row["columns"]) if all(row["columns"]) else (),
            unique=row["unique"],
            primary=row["primary"],
            valid=row["valid"],
            partial=row["partial"],
            method=row["method"],
            size_bytes=int(row["size_bytes"]),
            scans=int(row["scans"]),
            definition=row["definition"],
        )
        for row in await session.rows(_INDEXES)
    ]
    return Catalog(tables, indexes)
