"""Index advice: candidates from the workload, scored with hypothetical indexes, chosen greedily.

Each round every remaining candidate is made hypothetical (HypoPG) beside the indexes already
chosen, and the read statements on its table are planned again with real parameter values.
Its saving is the planner's cost saved, weighted by each statement's calls; its penalty is the
upkeep of one more index on every row its table's writes touch (``writePenalty`` scales it).
The best candidate is taken (or a prefix of it, its leading columns, when that saves within
5% as much) while its net saving is at least ``MIN_SHARE`` of the read workload's cost, up to
``maxNewIndexes``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from actuators.optimizer.database.binding import Bound, bind
from actuators.optimizer.database.candidates import candidates
from actuators.optimizer.database.catalog import Catalog, read_catalog
from actuators.optimizer.database.connection import Database, Session
from actuators.optimizer.database.findings import IndexFinding, index_findings
from actuators.optimizer.database.plans import Candidate, costs, hypothetical, plan
from actuators.optimizer.database.workload import Statement, capture
from tmsops.settings import DatabaseOptimization

MIN_SHARE = 0.02
NEAR_BEST = 0.05  # a prefix of the best candidate within 5% of its net saving is taken instead
WRITE_COST_PER_ROW = 10.0  # planner cost units to keep one more index entry current per written row
SLOW_QUERIES = 10


class QueryGain(BaseModel):
    queryid: int
    query: str
    calls: int
    cost_before: float
    cost_after: float


class IndexRecommendation(BaseModel):
    table: str
    columns: list[str]
    descending: list[bool]
    definition: str
    estimated_saving_pct: float
    estimated_size_bytes: int | None
    write_penalty: float
    queries: list[QueryGain]

    def candidate(self) -> Candidate:
        return Candidate(self.table, tuple(self.columns), tuple(self.descending))


class SlowQuery(BaseModel):
    queryid: int
    query: str
    calls: int
    mean_ms: float
    total_ms: float
    share_pct: float
    plan: dict[str, object] | None


class DatabaseAdvice(BaseModel):
    database: str
    statements: int
    read_statements: int
    unbound_statements: list[str]
    candidates_considered: int
    read_cost_before: float
    read_cost_after: float
    recommendations: list[IndexRecommendation]
    findings: list[IndexFinding]
    slow_queries: list[SlowQuery]


@dataclass
class _Scored:
    candidate: Candidate
    saving: float
    penalty: float
    after: dict[int, float]

    @property
    def net(self) -> float:
        return self.saving - self.penalty


async def advise(database: Database, policy: DatabaseOptimization) -> DatabaseAdvice:
    async with database.connect() as session:
        await database.require_extensions(session)
        catalog = await read_catalog(session)
        statements = await capture(session, catalog, min_calls=policy.min_calls)
        reads, unbound = await bind(session, [s for s in statements if s.is_read], catalog)
        before = await costs(session, reads)
        chosen = await _choose(session, reads, statements, catalog, before, policy)
        return DatabaseAdvice(
            database=database.name,
            statements=len(statements),
            read_statements=len(reads) + len(unbound),
            unbound_statements=[statement.query for statement in unbound],
            candidates_considered=len(candidates([bound.statement for bound in reads], catalog)),
            read_cost_before=_weighted(reads, before),
            read_cost_after=_weighted(reads, {**before, **{q: c for s in chosen for q, c in s.after.items()}}),
            recommendations=[await _recommendation(session, scored, reads, before) for scored in chosen],
            findings=index_findings(catalog),
            slow_queries=await _slow_queries(session, statements, reads),
        )


async def _choose(
    session: Session,
    reads: list[Bound],
    statements: list[Statement],
    catalog: Catalog,
    before: dict[int, float],
    policy: DatabaseOptimization,
) -> list[_Scored]:
    current = dict(before)
    total = _weighted(reads, before)
    remaining = candidates([bound.statement for bound in reads], catalog)
    chosen: list[_Scored] = []
    while remaining and len(chosen) < policy.max_new_indexes:
        scored = [
            await _score(session, c, [s.candidate for s in chosen], reads, current, statements, policy)
            for c in remaining
        ]
        best = _narrowest_near_best(scored)
        if total <= 0 or best.net < MIN_SHARE * total:
            break
        chosen.append(best)
        current.update(best.after)
        taken = [item.candidate for item in chosen]
        remaining = [c for c in remaining if not any(_prefix_of(c, other) for other in taken)]
    return chosen


async def _score(
    session: Session,
    candidate: Candidate,
    chosen: list[Candidate],
    reads: list[Bound],
    current: dict[int, float],
    statements: list[Statement],
    policy: DatabaseOptimization,
) -> _Scored:
    affected = [bound for bound in reads if candidate.table in bound.statement.shape.table_names]
    async with hypothetical(session, [*chosen, candidate]):
        after = await costs(session, affected)
    saving = sum(b.statement.calls * (current[b.statement.queryid] - after[b.statement.queryid]) for b in affected)
    written_rows = sum(s.rows for s in statements if s.shape.written == candidate.table)
    penalty = policy.write_penalty * WRITE_COST_PER_ROW * written_rows
    return _Scored(candidate, saving, penalty, after)


def _narrowest_near_best(scored: list[_Scored]) -> _Scored:
    """The best candidate, or a prefix of it (its leading columns) whose net saving is within
    ``NEAR_BEST`` of it.

    The extra columns of the wider one only spare a sort the planner rates a little dear; they
    make the index bigger to cache and to keep current, and measured, the prefix is as fast.
    A different leading column is another access path, and the planner's ranking stands.
    """
    best = max(scored, key=lambda item: item.net)
    near = [
        item
        for item in scored
        if _prefix_of(item.candidate, best.candidate) and item.net >= best.net - NEAR_BEST * abs(best.net)
    ]
    return min(near, key=lambda item: (len(item.candidate.columns), -item.net))


def _prefix_of(candidate: Candidate, other: Candidate) -> bool:
    return candidate.table == other.table and other.columns[: len(candidate.columns)] == candidate.columns


def _weighted(reads: list[Bound], cost_of: dict[int, float]) -> float:
    return sum(bound.statement.calls * cost_of[bound.statement.queryid] for bound in reads)


async def _recommendation(
    session: Session, scored: _Scored, reads: list[Bound], before: dict[int, float]
) -> IndexRecommendation:
    candidate = scored.candidate
    rows = await session.rows(
        "SELECT hypopg_relation_size(indexrelid) AS size FROM hypopg_create_index(%s)", (candidate.definition(),)
    )
    await session.rows("SELECT hypopg_reset()")
    total = _weighted(reads, before)
    gains = [
        QueryGain(
            queryid=bound.statement.queryid,
            query=bound.statement.query,
            calls=bound.statement.calls,
            cost_before=before[bound.statement.queryid],
            cost_after=scored.after[bound.statement.queryid],
        )
        for bound in reads
        if bound.statement.queryid in scored.after
        and scored.after[bound.statement.queryid] < before[bound.statement.queryid]
    ]
    return IndexRecommendation(
        table=candidate.table,
        columns=list(candidate.columns),
        descending=list(candidate.descending or (False,) * len(candidate.columns)),
        definition=candidate.definition(concurrently=True),
        estimated_saving_pct=round(100.0 * scored.saving / total, 2) if total else 0.0,
        estimated_size_bytes=int(rows[0]["size"]) if rows else None,
        write_penalty=scored.penalty,
        queries=gains,
    )


async def _slow_queries(session: Session, statements: list[Statement], reads: list[Bound]) -> list[SlowQuery]:
    total = sum(statement.total_ms for statement in statements) or 1.0
    bindings = {bound.statement.queryid: bound.bindings[0] for bound in reads if bound.bindings}
    slowest = sorted(statements, key=lambda statement: -statement.total_ms)[:SLOW_QUERIES]
    found = []
    for statement in slowest:
        binding = bindings.get(statement.queryid)
        found.append(
            SlowQuery(
                queryid=statement.queryid,
                query=statement.query,
                calls=statement.calls,
                mean_ms=round(statement.mean_ms, 3),
                total_ms=round(statement.total_ms, 1),
                share_pct=round(100.0 * statement.total_ms / total, 2),
                plan=await plan(session, statement.query, binding) if binding is not None else None,
            )
        )
    return found
