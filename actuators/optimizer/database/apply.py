"""Apply an index only when it is measured to help; take it back when it does not.

The statements it could serve (the workload's reads on its table) are timed on the real
server before the build, with real parameter values. The journal entry is written, then
``CREATE INDEX CONCURRENTLY`` runs under a lock timeout (a failed build leaves an invalid
index behind: it is dropped). The same statements are timed again; the index stays when the
call-weighted read time fell by at least ``minGain``, otherwise ``DROP INDEX CONCURRENTLY``
takes it back. Anything that goes wrong after the build also drops it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any

from actuators.optimizer.database.binding import Bound, bind
from actuators.optimizer.database.catalog import read_catalog
from actuators.optimizer.database.connection import Database, Session, StatementFailed
from actuators.optimizer.database.plans import Candidate, plan, quoted, timed, uses_index
from actuators.optimizer.database.workload import capture
from actuators.optimizer.journal import Kind, Optimization, OptimizationJournal, Status
from tmsops.errors import PermanentError, TmsopsError
from tmsops.settings import DatabaseOptimization

NAME_PREFIX = "tmsops_"
log = logging.getLogger(__name__)


class UnknownTable(PermanentError):
    http_status = 404


class UnknownColumn(PermanentError):
    http_status = 422


class AlreadyCovered(PermanentError):
    http_status = 409


class NothingToMeasure(PermanentError):
    http_status = 409


def index_name(candidate: Candidate) -> str:
    """``tmsops_<table>_<columns>_<hash>``, within PostgreSQL's 63 bytes; the hash of the exact definition
    (names, case and directions) keeps two different candidates from sharing a name."""
    digest = hashlib.sha1(candidate.label.encode()).hexdigest()[:8]
    readable = re.sub(r"[^a-z0-9_]+", "_", f"{NAME_PREFIX}{candidate.table}_{'_'.join(candidate.columns)}".lower())
    return f"{readable[:54]}_{digest}"


def drop_sql(name: str) -> str:
    return f"DROP INDEX CONCURRENTLY IF EXISTS {quoted(name)}"


async def apply_index(
    database: Database,
    journal: OptimizationJournal,
    policy: DatabaseOptimization,
    candidate: Candidate,
    *,
    service: str,
    dry_run: bool = False,
) -> Optimization:
    name = index_name(candidate)
    async with database.connect() as session:
        await database.require_extensions(session, ("pg_stat_statements",))
        reads = await _reads_on(session, candidate, policy)
        change = {
            "sql": candidate.definition(name, concurrently=True),
            "table": candidate.table,
            "columns": list(candidate.columns),
            "queries": [bound.statement.query for bound in reads],
        }
        undo = {"sql": drop_sql(name), "index": name}
        if dry_run:
            return journal.begin(
                Kind.INDEX, service, name, "create_index", change=change, undo=undo, status=Status.DRY_RUN
            )
        before = await _read_time(session, reads)
        timed_reads = [bound for bound in reads if str(bound.statement.queryid) in before]
        if not timed_reads:
            raise NothingToMeasure(
                f"no statement of the workload that reads {candidate.table!r} can be timed: "
                "an index there could not be measured, so it is not built",
                details={"table": candidate.table},
            )
        entry = journal.begin(Kind.INDEX, service, name, "create_index", change=change, undo=undo, before=before)
        try:
            await _build(session, candidate.definition(name, concurrently=True), policy)
        except TmsopsError as error:
            await session.execute(drop_sql(name))  # if this fails too, the entry stays "applying": recovery drops it
            journal.update(
                entry.id, status=Status.FAILED, reason=f"the build failed and was cleaned up: {error.message}"
            )
            raise
        journal.update(entry.id, status=Status.MEASURING)
        try:
            after = await _read_time(session, timed_reads)
            timed_after = [bound for bound in timed_reads if str(bound.statement.queryid) in after]
            users = await _statements_using(session, timed_after, name)
        except BaseException as error:
            await session.execute(drop_sql(name))
            journal.update(entry.id, status=Status.ROLLED_BACK, reason=f"measuring failed ({error!r}); index dropped")
            raise
        both = {key for key in before if key in after and key != "weighted_ms"}
        before = {**before, "weighted_ms": _weighted(timed_reads, before, both)}
        verdict_after: dict[str, Any] = {**after, "weighted_ms": _weighted(timed_reads, after, both), "used_by": users}
        return await _verdict(session, journal, entry, before, verdict_after, policy.min_gain)


async def _build(session: Session, definition: str, policy: DatabaseOptimization) -> None:
    """``CREATE INDEX CONCURRENTLY`` under the lock timeout and without a statement timeout (a build of a
    large table takes what it takes); both set back after, so a clean-up is not cut short by the lock one."""
    await session.execute(f"SET lock_timeout = {int(policy.lock_timeout.total_seconds() * 1000)}")
    await session.execute("SET statement_timeout = 0")
    try:
        await session.execute(definition)
    finally:
        await session.execute("RESET lock_timeout")
        await session.execute(f"SET statement_timeout = {int(policy.statement_timeout.total_seconds() * 1000)}")


def _weighted(reads: list[Bound], times: dict[str, Any], keys: set[str]) -> float:
    """Call-weighted time of the statements in ``keys`` (those timed both before and after), ms."""
    return sum(
        bound.statement.calls * float(times[str(bound.statement.queryid)])
        for bound in reads
        if str(bound.statement.queryid) in keys
    )


async def _verdict(
    session: Session,
    journal: OptimizationJournal,
    entry: Optimization,
    before: dict[str, Any],
    after: dict[str, Any],
    min_gain: float,
) -> Optimization:
    """Kept when some statement's plan reads the index and the call-weighted read time fell by ``min_gain``.

    The plan check keeps timing noise on fast statements from passing an index nobody uses.
    """
    gain = 1.0 - after["weighted_ms"] / before["weighted_ms"] if before["weighted_ms"] > 0 else 0.0
    after = {**after, "gain": round(gain, 4)}
    if not after["used_by"]:
        why = "no statement of the workload plans to read it: index dropped"
    elif gain < min_gain:
        why = f"measured gain {gain:.1%} is below minGain {min_gain:.0%}: index dropped"
    else:
        reason = f"read time down {gain:.0%} (at least {min_gain:.0%}); used by {len(after['used_by'])} statement(s)"
        return journal.update(entry.id, status=Status.KEPT, after=after, reason=reason)
    await session.execute(entry.undo["sql"])
    return journal.update(entry.id, status=Status.ROLLED_BACK, after=after, reason=why)


async def _statements_using(session: Session, reads: list[Bound], name: str) -> list[str]:
    """The queryids of the statements whose plan (with their first binding) reads index ``name``."""
    return [
        str(bound.statement.queryid)
        for bound in reads
        if bound.bindings and name in uses_index(await plan(session, bound.statement.query, bound.bindings[0]))
    ]


async def rollback_index(
    database: Database, journal: OptimizationJournal, entry: Optimization, reason: str
) -> Optimization:
    """Drop the index of ``entry`` (if it exists) and mark it rolled back."""
    async with database.connect() as session:
        await session.execute(entry.undo["sql"])
    return journal.update(entry.id, status=Status.ROLLED_BACK, reason=reason)


async def _reads_on(session: Session, candidate: Candidate, policy: DatabaseOptimization) -> list[Bound]:
    catalog = await read_catalog(session)
    table = catalog.tables.get(candidate.table)
    if table is None:
        raise UnknownTable(f"no table {candidate.table!r} in the database", details={"known": sorted(catalog.tables)})
    unknown = [column for column in candidate.columns if column not in table.columns]
    if unknown:
        raise UnknownColumn(f"table {candidate.table!r} has no column {', '.join(map(repr, unknown))}")
    covering = catalog.covered(candidate.table, candidate.columns) if not candidate.descending else None
    if covering is not None:
        raise AlreadyCovered(f"the index {covering.name!r} already covers {candidate.label}")
    name = index_name(candidate)
    if any(index.name == name for index in catalog.indexes):
        raise AlreadyCovered(f"an index named {name!r} exists already (an earlier change): {candidate.label}")
    statements = await capture(session, catalog, min_calls=1)
    reads = [s for s in statements if s.is_read and candidate.table in s.shape.table_names]
    bound, _ = await bind(session, reads, catalog)
    return bound


async def _read_time(session: Session, reads: list[Bound]) -> dict[str, float]:
    """Each statement's median time (by queryid) and the call-weighted total, ms.

    Timing runs a statement (EXPLAIN ANALYZE), so it runs read-only: a SELECT that would write
    (a function with side effects) or lock rows fails instead, and is left out of the timing.
    """
    times: dict[str, float] = {}
    await session.execute("SET default_transaction_read_only = on")
    try:
        for bound in reads:
            try:
                times[str(bound.statement.queryid)] = await timed(session, bound)
            except StatementFailed as error:
                log.info("statement %d left out of the timing: %s", bound.statement.queryid, error.message)
    finally:
        await session.execute("SET default_transaction_read_only = off")
    return {**times, "weighted_ms": _weighted(reads, times, set(times))}


__all__ = [
    "AlreadyCovered",
    "NothingToMeasure",
    "StatementFailed",
    "UnknownColumn",
    "UnknownTable",
    "apply_index",
    "rollback_index",
]
