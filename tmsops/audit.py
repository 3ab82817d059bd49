"""The append-only audit log: one entry per attempt to change something, allowed or refused.

An entry holds when, which token (``None`` when none was recognised), the endpoint (method
and path), the parameters, and the result: ``allowed`` (the change was made), ``refused``
(401/403: authentication or scope), ``failed`` (authorised, but the request failed), with
the HTTP status and a message. There is no API to change or remove an entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from sqlalchemy import JSON, Column, DateTime, Engine, Integer, MetaData, String, Table, Text, insert, select
from sqlalchemy.sql import Select

_metadata = MetaData()

audit_table = Table(
    "audit_log",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("token_id", String(64), nullable=True, index=True),
    Column("method", String(16), nullable=False),
    Column("path", Text, nullable=False),
    Column("parameters", JSON, nullable=False),
    Column("result", String(16), nullable=False, index=True),
    Column("status_code", Integer, nullable=False),
    Column("message", Text, nullable=False),
)


class AuditResult(StrEnum):
    ALLOWED = "allowed"
    REFUSED = "refused"
    FAILED = "failed"


class AuditEntry(BaseModel):
    """One recorded attempt."""

    model_config = ConfigDict(frozen=True)

    id: int
    at: datetime
    token_id: str | None
    method: str
    path: str
    parameters: dict[str, Any]
    result: AuditResult
    status_code: int
    message: str

    @property
    def endpoint(self) -> str:
        return f"{self.method} {self.path}"


def _not_a_number(value: object) -> object:
    """A time is ISO 8601 text; a bare number (seconds? milliseconds?) is refused."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number or (isinstance(value, str) and _is_number(value)):
        raise ValueError("expected an ISO 8601 date-time such as 2026-03-01T12:00:00Z, not a number")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# Naive times are taken as UTC (see _utc).
Time = Annotated[datetime, BeforeValidator(_not_a_number)]


class AuditQuery(BaseModel):
    """Filters of a search of the audit log; entries come newest first."""

    model_config = ConfigDict(extra="forbid")

    since: Time | None = Field(None, description="entries at or after this time (ISO 8601; UTC if no offset)")
    until: Time | None = Field(None, description="entries before this time (ISO 8601; UTC if no offset)")
    token_id: str | None = None
    method: str | None = Field(None, description="HTTP method, e.g. POST")
    path_prefix: str | None = Field(None, description="entries whose path starts with this")
    result: AuditResult | None = None
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=2**63 - 1)  # the state store's 64-bit integers


@dataclass
class AuditAttempt:
    """What a request protected by a scope tells the audit log; completed once the response is known."""

    parameters: dict[str, Any]
    token_id: str | None = None
    refused: bool = False


class AuditLog:
    """Appends and searches audit entries in the state store."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        audit_table.create(engine, checkfirst=True)

    def append(
        self,
        *,
        method: str,
        path: str,
        token_id: str | None,
        parameters: dict[str, Any],
        result: AuditResult,
        status_code: int,
        message: str,
    ) -> int:
        row = {
            "at": datetime.now(UTC),
            "token_id": token_id,
            "method": method.upper(),
            "path": path,
            "parameters": parameters,
            "result": result.value,
            "status_code": status_code,
            "message": message,
        }
        with self._engine.begin() as connection:
            inserted = connection.execute(insert(audit_table).values(row).returning(audit_table.c.id))
            return int(inserted.scalar_one())

    def query(self, filters: AuditQuery | None = None) -> list[AuditEntry]:
        statement = _filtered(filters or AuditQuery())
        with self._engine.connect() as connection:
            return [_entry(row._mapping) for row in connection.execute(statement)]


def _filtered(filters: AuditQuery) -> Select[Any]:
    columns = audit_table.c
    statement = select(audit_table).order_by(columns.id.desc()).limit(filters.limit).offset(filters.offset)
    conditions = [
        columns.at >= _utc(filters.since) if filters.since else None,
        columns.at < _utc(filters.until) if filters.until else None,
        columns.token_id == filters.token_id if filters.token_id else None,
        columns.method == filters.method.upper() if filters.method else None,
        columns.path.startswith(filters.path_prefix, autoescape=True) if filters.path_prefix else None,
        columns.result == filters.result.value if filters.result else None,
    ]
    return statement.where(*(condition for condition in conditions if condition is not None))


def _utc(moment: datetime) -> datetime:
    """Naive times are taken as UTC; SQLite keeps no offset, so every stored time is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _entry(row: Any) -> AuditEntry:
    return AuditEntry.model_validate({**row, "at": _utc(row["at"])})
