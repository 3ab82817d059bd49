"""Every scaling decision with its inputs and reason, in the state store (SQLite by default).

A record is written for every decision, acted on or not: the loop's (``source`` ``loop``)
and the ones asked through ``POST /scale`` (``source`` ``api``). ``at`` is when the decision
was made (a scale-up is written once the target has done it, with the decision's time);
``applied`` says whether the target was changed, ``error`` why a change failed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
)

_metadata = MetaData()

decisions_table = Table(
    "scaling_decisions",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("service", String(200), nullable=False, index=True),
    Column("source", String(16), nullable=False),
    Column("mode", String(32), nullable=False),
    Column("current", Integer, nullable=False),
    Column("desired", Integer, nullable=False),
    Column("reactive", Integer, nullable=True),
    Column("predictive", Integer, nullable=True),
    Column("applied", Boolean, nullable=False),
    Column("fallback", Text, nullable=True),
    Column("reason", Text, nullable=False),
    Column("error", Text, nullable=True),
    Column("inputs", JSON, nullable=False),
)


class DecisionRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    at: datetime
    service: str
    source: Literal["loop", "api"]
    mode: str
    current: int
    desired: int
    reactive: int | None
    predictive: int | None
    applied: bool
    fallback: str | None
    reason: str
    error: str | None
    inputs: dict[str, Any]


class DecisionStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        decisions_table.create(engine, checkfirst=True)

    def add(self, **fields: Any) -> int:
        row = {"at": datetime.now(UTC), "error": None, "fallback": None, "reactive": None, "predictive": None, **fields}
        with self._engine.begin() as connection:
            key = connection.execute(insert(decisions_table).values(row)).inserted_primary_key
        assert key is not None
        return int(key[0])

    def recent(
        self, service: str | None = None, since: datetime | None = None, limit: int = 1000
    ) -> list[DecisionRecord]:
        """Newest first."""
        statement = select(decisions_table).order_by(decisions_table.c.id.desc()).limit(limit)
        if service is not None:
            statement = statement.where(decisions_table.c.service == service)
        if since is not None:
            statement = statement.where(decisions_table.c.at >= since)
        with self._engine.connect() as connection:
            rows = connection.execute(statement).mappings().all()
        return [DecisionRecord.model_validate({**row, "at": _aware(row["at"])}) for row in rows]

    def prune(self, keep: timedelta) -> int:
        cutoff = datetime.now(UTC) - keep
        with self._engine.begin() as connection:
            return connection.execute(delete(decisions_table).where(decisions_table.c.at < cutoff)).rowcount


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
