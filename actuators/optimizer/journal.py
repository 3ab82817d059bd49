"""The optimizer's journal: every change it applies, with its measured before and after.

A change is written here *before* it is made (status ``applying``), with what it does
(``change``) and how to take it back (``undo``). Then:

- ``measuring``: the change is in place and being measured;
- ``kept``: the measured gain held;
- ``rolled_back``: it did not help (or a measurement failed, or a crash interrupted it) and was
  taken back;
- ``failed``: it could not be made (nothing is in place; ``reason`` says why);
- ``dry_run``: a plan only, nothing was changed.

So after a crash, every row still ``applying`` or ``measuring`` is a change that may be in
place without a verdict: the service rolls each one back at start-up.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    select,
    update,
)

from tmsops.errors import PermanentError


class Kind(StrEnum):
    INDEX = "index"
    CACHE = "cache"
    RESOURCES = "resources"


class Status(StrEnum):
    APPLYING = "applying"
    MEASURING = "measuring"
    KEPT = "kept"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    DRY_RUN = "dry_run"


UNFINISHED = (Status.APPLYING, Status.MEASURING)


class OptimizationNotFound(PermanentError):
    http_status = 404


_metadata = MetaData()

optimizations_table = Table(
    "optimizations",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False, index=True),
    Column("service", String(200), nullable=False, index=True),
    Column("subject", Text, nullable=False),
    Column("action", String(64), nullable=False),
    Column("change", JSON, nullable=False),
    Column("undo", JSON, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("before", JSON, nullable=True),
    Column("after", JSON, nullable=True),
    Column("reason", Text, nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


class Optimization(BaseModel):
    """One journalled change. ``subject`` names what changed (an index, a Redis setting, a service)."""

    model_config = ConfigDict(frozen=True)

    id: int
    kind: Kind
    service: str
    subject: str
    action: str
    change: dict[str, Any]
    undo: dict[str, Any]
    status: Status
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reason: str
    created_at: datetime
    updated_at: datetime


class OptimizationJournal:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        optimizations_table.create(engine, checkfirst=True)

    def begin(
        self,
        kind: Kind,
        service: str,
        subject: str,
        action: str,
        *,
        change: dict[str, Any],
        undo: dict[str, Any],
        before: dict[str, Any] | None = None,
        status: Status = Status.APPLYING,
        reason: str = "",
    ) -> Optimization:
        """Write a change before it is made (``applying``), or a plan (``dry_run``)."""
        now = datetime.now(UTC)
        row = {
            "kind": kind.value,
            "service": service,
            "subject": subject,
            "action": action,
            "change": change,
            "undo": undo,
            "status": status.value,
            "before": before,
            "after": None,
            "reason": reason,
            "created_at": now,
            "updated_at": now,
        }
        with self._engine.begin() as connection:
            key = connection.execute(insert(optimizations_table).values(row)).inserted_primary_key
        assert key is not None
        return self.get(int(key[0]))

    def update(
        self,
        optimization_id: int,
        *,
        status: Status | None = None,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> Optimization:
        values: dict[str, Any] = {"updated_at": datetime.now(UTC)}
        if status is not None:
            values["status"] = status.value
        if before is not None:
            values["before"] = before
        if after is not None:
            values["after"] = after
        if reason is not None:
            values["reason"] = reason
        with self._engine.begin() as connection:
            connection.execute(
                update(optimizations_table).where(optimizations_table.c.id == optimization_id).values(values)
            )
        return self.get(optimization_id)

    def get(self, optimization_id: int) -> Optimization:
        with self._engine.connect() as connection:
            row = (
                connection.execute(select(optimizations_table).where(optimizations_table.c.id == optimization_id))
                .mappings()
                .first()
            )
        if row is None:
            raise OptimizationNotFound(f"no optimization with id {optimization_id}")
        return _optimization(row)

    def recent(self, *, kind: Kind | None = None, service: str | None = None, limit: int = 200) -> list[Optimization]:
        """Newest first."""
        statement = select(optimizations_table).order_by(optimizations_table.c.id.desc()).limit(limit)
        if kind is not None:
            statement = statement.where(optimizations_table.c.kind == kind.value)
        if service is not None:
            statement = statement.where(optimizations_table.c.service == service)
        with self._engine.connect() as connection:
            return [_optimization(row) for row in connection.execute(statement).mappings()]

    def counts(self) -> dict[tuple[str, str], int]:
        """How many changes there are of each (kind, status)."""
        columns = optimizations_table.c
        statement = select(columns.kind, columns.status, func.count()).group_by(columns.kind, columns.status)
        with self._engine.connect() as connection:
            return {(kind, status): count for kind, status, count in connection.execute(statement)}

    def unfinished(self) -> list[Optimization]:
        """Changes that may be in place without a verdict (a crash in the middle), oldest first."""
        statement = (
            select(optimizations_table)
            .where(optimizations_table.c.status.in_([status.value for status in UNFINISHED]))
            .order_by(optimizations_table.c.id)
        )
        with self._engine.connect() as connection:
            return [_optimization(row) for row in connection.execute(statement).mappings()]


def _optimization(row: Any) -> Optimization:
    return Optimization.model_validate(
        {**row, "created_at": _aware(row["created_at"]), "updated_at": _aware(row["updated_at"])}
    )


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
