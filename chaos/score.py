"""Resilience scores, Litmus-style: weighted probe success.

An experiment's score is the weighted mean, over its probes, of each probe's success
percentage while the fault was in effect and after the rollback (the ``during`` and
``after`` phases; the check before the start is a gate, not a measurement):
``sum(weight * passed / evaluated) / sum(weight) * 100``. An experiment whose probes never
ran under the fault has no score (``None``). A service's score is the mean of its finished
experiments' scores, weighted by each experiment's ``weight``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Protocol

SCORED_PHASES = frozenset({"during", "after"})


class Evaluation(Protocol):
    @property
    def probe(self) -> str: ...

    @property
    def ok(self) -> bool: ...

    @property
    def weight(self) -> float: ...

    @property
    def phase(self) -> str: ...


def experiment_score(results: Iterable[Evaluation]) -> float | None:
    """Weighted probe success percentage, 0..100; None without any scored evaluation."""
    passed: dict[str, int] = defaultdict(int)
    evaluated: dict[str, int] = defaultdict(int)
    weights: dict[str, float] = {}
    for result in results:
        if result.phase not in SCORED_PHASES:
            continue
        evaluated[result.probe] += 1
        passed[result.probe] += int(result.ok)
        weights[result.probe] = result.weight
    total = sum(weights.values())
    if not total:
        return None
    return round(100 * sum(weights[name] * passed[name] / evaluated[name] for name in weights) / total, 2)


def service_score(scores: Sequence[tuple[float | None, float]]) -> float | None:
    """Mean of ``(score, weight)`` pairs with a score, weighted; None when none has one."""
    scored = [(score, weight) for score, weight in scores if score is not None]
    total = sum(weight for _, weight in scored)
    return round(sum(score * weight for score, weight in scored) / total, 2) if total else None
