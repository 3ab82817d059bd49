"""The journal: experiments, every injection and rollback, probe results and events, in the state store.

Every injection is written here before the target is asked (state ``injecting``); the target's
fault id is added once known (``active``); the rollback is recorded only when the target
confirms the fault is gone (``reverted``, with the target's answer: ``reverted``, ``expired`` or
``absent``). An injection the target refused is ``failed`` (nothing was injected). So after a
crash, every row in ``injecting`` or ``active`` is a fault that may still be in effect.

Experiment status, a one-way state machine:

- ``created``: validated and stored, not started (a dry run or a refused start leaves it there);
- ``running``: the safety checks passed and the run began;
- ``completed``: the fault ran its whole duration, no probe round failed, the steady state held
  after the rollback;
- ``deviated``: the fault ran its whole duration and was rolled back, but some probe rounds failed
  (fewer than ``failureThreshold`` in a row), or the steady state did not come back after the rollback;
- ``aborted``: ended early and rolled back: ``failureThreshold`` failed rounds in a row, a stop
  request, the emergency stop, or a restart of this service in the middle of the run;
- ``failed``: the target refused or failed the injection, or could not confirm the rollback
  before the fault's time-to-live ended (the target then ends it by itself).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
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

from chaos.errors import ExperimentNotFound, JournalError
from tmsops.targets.model import Fault, FaultRequest


class Status(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    COMPLETED = "completed"
    DEVIATED = "deviated"
    ABORTED = "aborted"
    FAILED = "failed"


class InjectionState(StrEnum):
    INJECTING = "injecting"
    ACTIVE = "active"
    REVERTED = "reverted"
    FAILED = "failed"


FINAL = frozenset({Status.COMPLETED, Status.DEVIATED, Status.ABORTED, Status.FAILED})
STATUS_MOVES: dict[Status, frozenset[Status]] = {
    Status.CREATED: frozenset({Status.RUNNING}),
    Status.RUNNING: FINAL,
    **{status: frozenset() for status in FINAL},
}
INJECTION_MOVES: dict[InjectionState, frozenset[InjectionState]] = {
    InjectionState.INJECTING: frozenset({InjectionState.ACTIVE, InjectionState.FAILED, InjectionState.REVERTED}),
    InjectionState.ACTIVE: frozenset({InjectionState.REVERTED}),
    InjectionState.REVERTED: frozenset(),
    InjectionState.FAILED: frozenset(),
}
OPEN_INJECTIONS = (InjectionState.INJECTING.value, InjectionState.ACTIVE.value)

_metadata = MetaData()

experiments_table = Table(
    "chaos_experiments",
    _metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("name", String(200), nullable=False),
    Column("service", String(200), nullable=False, index=True),
    Column("fault_type", String(32), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("reason", Text, nullable=True),
    Column("created_by", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    Column("score", Float, nullable=True),
)

injections_table = Table(
    "chaos_injections",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("experiment_id", String(32), nullable=False, index=True),
    Column("service", String(200), nullable=False),
    Column("fault_type", String(32), nullable=False),
    Column("request", JSON, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("fault_id", String(64), nullable=True),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("injected_at", DateTime(timezone=True), nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revert_requested_at", DateTime(timezone=True), nullable=True),
    Column("reverted_at", DateTime(timezone=True), nullable=True),
    Column("target_state", String(16), nullable=True),
    Column("revert_attempts", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
)

probes_table = Table(
    "chaos_probe_results",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("experiment_id", String(32), nullable=False, index=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("phase", String(16), nullable=False),
    Column("round", Integer, nullable=False),
    Column("probe", String(100), nullable=False),
    Column("type", String(16), nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("value", Float, nullable=True),
    Column("detail", Text, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("weight", Float, nullable=False),
)

events_table = Table(
    "chaos_events",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("experiment_id", String(32), nullable=True, index=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("message", Text, nullable=False),
    Column("data", JSON, nullable=False),
)

settings_table = Table(
    "chaos_safety_state",
    _metadata,
    Column("key", String(64), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


class Record(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class ExperimentRecord(Record):
    id: str
    kind: str
    name: str
    service: str
    fault_type: str
    spec: dict[str, Any]
    status: Status
    reason: str | None
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    score: float | None


class InjectionRecord(Record):
    id: int
    experiment_id: str
    service: str
    fault_type: str
    request: dict[str, Any]
    state: InjectionState
    fault_id: str | None
    requested_at: datetime
    injected_at: datetime | None
    expires_at: datetime | None
    revert_requested_at: datetime | None
    reverted_at: datetime | None
    target_state: str | None
    revert_attempts: int
    error: str | None


class ProbeRecord(Record):
    id: int
    experiment_id: str
    at: datetime
    phase: str
    round: int
    probe: str
    type: str
    ok: bool
    value: float | None
    detail: str
    duration_ms: float
    weight: float


class EventRecord(Record):
    id: int
    experiment_id: str | None
    at: datetime
    kind: str
    message: str
    data: dict[str, Any]


def now() -> datetime:
    return datetime.now(UTC)


class Journal:
    """Reads and writes the chaos tables; every write is its own transaction, committed before it returns."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        _metadata.create_all(engine, checkfirst=True)

    # Experiments.

    def create(self, spec: dict[str, Any], *, kind: str, created_by: str | None) -> ExperimentRecord:
        row = {
            "id": f"exp-{uuid.uuid4().hex[:12]}",
            "kind": kind,
            "name": spec["name"],
            "service": spec["target"]["service"],
            "fault_type": spec["faultType"],
            "spec": spec,
            "status": Status.CREATED.value,
            "created_by": created_by,
            "created_at": now(),
        }
        self._write(insert(experiments_table).values(row))
        self.event(row["id"], "created", f"{kind} {spec['name']!r} created")
        return self.get(row["id"])

    def get(self, experiment_id: str) -> ExperimentRecord:
        rows = self._rows(select(experiments_table).where(experiments_table.c.id == experiment_id))
        if not rows:
            raise ExperimentNotFound(experiment_id)
        return ExperimentRecord.model_validate(rows[0])

    def experiments(
        self, *, status: Sequence[str] = (), service: str | None = None, limit: int = 200
    ) -> list[ExperimentRecord]:
        """Newest first."""
        columns = experiments_table.c
        statement = select(experiments_table).order_by(columns.created_at.desc(), columns.id).limit(limit)
        if status:
            statement = statement.where(columns.status.in_(list(status)))
        if service is not None:
            statement = statement.where(columns.service == service)
        return [ExperimentRecord.model_validate(row) for row in self._rows(statement)]

    def move(self, experiment_id: str, to: Status, reason: str | None = None) -> ExperimentRecord:
        """Change the status along the state machine; JournalError when the move is not allowed."""
        current = self.get(experiment_id).status
        if to not in STATUS_MOVES[current]:
            raise JournalError(f"experiment {experiment_id} is {current}; it cannot become {to}")
        values: dict[str, Any] = {"status": to.value}
        if to is Status.RUNNING:
            values["started_at"] = now()
        if to in FINAL:
            values |= {"ended_at": now(), "reason": reason}
        condition = (experiments_table.c.id == experiment_id) & (experiments_table.c.status == current.value)
        if self._write(update(experiments_table).where(condition).values(values)) != 1:
            raise JournalError(f"experiment {experiment_id} changed while becoming {to}")
        self.event(experiment_id, "status", f"{current} -> {to}" + (f": {reason}" if reason else ""))
        return self.get(experiment_id)

    def set_score(self, experiment_id: str, score: float | None) -> None:
        self._write(update(experiments_table).where(experiments_table.c.id == experiment_id).values(score=score))

    def experiment_counts(self) -> dict[str, int]:
        """How many experiments there are in each status."""
        columns = experiments_table.c
        statement = select(columns.status, func.count()).group_by(columns.status)
        with self._engine.connect() as connection:
            return {status: count for status, count in connection.execute(statement)}

    def open_injection_count(self) -> int:
        """Faults injected (or being injected) and not reverted yet."""
        statement = select(func.count()).where(injections_table.c.state.in_(OPEN_INJECTIONS))
        with self._engine.connect() as connection:
            return int(connection.execute(statement).scalar_one())

    # Injections.

    def injecting(self, experiment_id: str, request: FaultRequest) -> InjectionRecord:
        """Write the injection before the target is asked."""
        row = {
            "experiment_id": experiment_id,
            "service": request.service,
            "fault_type": request.fault.type.value,
            "request": request.model_dump(mode="json", by_alias=True, exclude={"dry_run"}),
            "state": InjectionState.INJECTING.value,
            "requested_at": now(),
            "revert_attempts": 0,
        }
        key = self._insert(injections_table, row)
        self.event(experiment_id, "injecting", f"injecting {row['fault_type']} into {request.service}", {"id": key})
        return self.injection(key)

    def injected(self, injection_id: int, fault: Fault) -> InjectionRecord:
        values = {"fault_id": fault.id, "injected_at": fault.injected_at, "expires_at": fault.expires_at}
        return self._move_injection(injection_id, InjectionState.ACTIVE, values, f"fault {fault.id} in effect")

    def refused(self, injection_id: int, error: str) -> InjectionRecord:
        return self._move_injection(injection_id, InjectionState.FAILED, {"error": error}, f"not injected: {error}")

    def revert_attempt(self, injection_id: int, error: str | None) -> None:
        """Count one rollback attempt (and its error, if it failed)."""
        record = self.injection(injection_id)
        values: dict[str, Any] = {"revert_attempts": record.revert_attempts + 1, "error": error or record.error}
        if record.revert_requested_at is None:
            values["revert_requested_at"] = now()
        self._write(update(injections_table).where(injections_table.c.id == injection_id).values(values))

    def reverted(self, injection_id: int, target_state: str, fault_id: str | None = None) -> InjectionRecord:
        values: dict[str, Any] = {"reverted_at": now(), "target_state": target_state}
        if fault_id is not None:
            values["fault_id"] = fault_id
        message = f"rollback confirmed by the target ({target_state})"
        return self._move_injection(injection_id, InjectionState.REVERTED, values, message)

    def injection(self, injection_id: int) -> InjectionRecord:
        rows = self._rows(select(injections_table).where(injections_table.c.id == injection_id))
        if not rows:
            raise JournalError(f"unknown injection {injection_id}")
        return InjectionRecord.model_validate(rows[0])

    def injections(self, experiment_id: str | None = None, *, open_only: bool = False) -> list[InjectionRecord]:
        statement = select(injections_table).order_by(injections_table.c.id)
        if experiment_id is not None:
            statement = statement.where(injections_table.c.experiment_id == experiment_id)
        if open_only:
            statement = statement.where(injections_table.c.state.in_(OPEN_INJECTIONS))
        return [InjectionRecord.model_validate(row) for row in self._rows(statement)]

    def _move_injection(
        self, injection_id: int, to: InjectionState, values: dict[str, Any], message: str
    ) -> InjectionRecord:
        record = self.injection(injection_id)
        if to not in INJECTION_MOVES[record.state]:
            raise JournalError(f"injection {injection_id} is {record.state}; it cannot become {to}")
        condition = (injections_table.c.id == injection_id) & (injections_table.c.state == record.state.value)
        if self._write(update(injections_table).where(condition).values({**values, "state": to.value})) != 1:
            raise JournalError(f"injection {injection_id} changed while becoming {to}")
        self.event(record.experiment_id, to.value, message, {"injection": injection_id})
        return self.injection(injection_id)

    # Probe results and events.

    def probe_results(self, experiment_id: str, phase: str, round_number: int, results: Sequence[Any]) -> None:
        rows = [
            {"experiment_id": experiment_id, "phase": phase, "round": round_number, **result.row()}
            for result in results
        ]
        if rows:
            self._write(insert(probes_table), rows)

    def probes(self, experiment_id: str) -> list[ProbeRecord]:
        statement = (
            select(probes_table).where(probes_table.c.experiment_id == experiment_id).order_by(probes_table.c.id)
        )
        return [ProbeRecord.model_validate(row) for row in self._rows(statement)]

    def event(self, experiment_id: str | None, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        row = {"experiment_id": experiment_id, "at": now(), "kind": kind, "message": message, "data": data or {}}
        self._write(insert(events_table).values(row))

    def events(self, experiment_id: str | None = None, *, limit: int = 1000) -> list[EventRecord]:
        statement = select(events_table).order_by(events_table.c.id.desc()).limit(limit)
        if experiment_id is not None:
            statement = statement.where(events_table.c.experiment_id == experiment_id)
        return [EventRecord.model_validate(row) for row in reversed(self._rows(statement))]

    # Safety state (the emergency stop).

    def read_state(self, key: str) -> dict[str, Any] | None:
        rows = self._rows(select(settings_table).where(settings_table.c.key == key))
        return dict(rows[0]["value"]) if rows else None

    def write_state(self, key: str, value: dict[str, Any]) -> None:
        with self._engine.begin() as connection:
            changed = connection.execute(
                update(settings_table).where(settings_table.c.key == key).values(value=value, updated_at=now())
            ).rowcount
            if not changed:
                connection.execute(insert(settings_table).values(key=key, value=value, updated_at=now()))

    # Plumbing.

    def _write(self, statement: Any, parameters: Any = None) -> int:
        with self._engine.begin() as connection:
            result = (
                connection.execute(statement, parameters) if parameters is not None else connection.execute(statement)
            )
            return int(result.rowcount or 0)

    def _insert(self, table: Table, row: dict[str, Any]) -> int:
        with self._engine.begin() as connection:
            key = connection.execute(insert(table).values(row)).inserted_primary_key
        assert key is not None
        return int(key[0])

    def _rows(self, statement: Any) -> list[dict[str, Any]]:
        with self._engine.connect() as connection:
            return [_aware(dict(row)) for row in connection.execute(statement).mappings()]


def _aware(row: dict[str, Any]) -> dict[str, Any]:
    """SQLite keeps no time zone: every stored time is UTC."""
    return {
        key: value.replace(tzinfo=UTC) if isinstance(value, datetime) and value.tzinfo is None else value
        for key, value in row.items()
    }
