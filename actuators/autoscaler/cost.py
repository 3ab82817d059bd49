"""Replica-hours and their cost over a window, from the recorded decisions.

Each loop decision holds the count running then (``current``) and the HPA rule's answer on
the same observations (``reactive``); integrating them over time gives the replica-hours
used and what the HPA would have used (a counterfactual: with fewer replicas the same
demand would also have read as a higher utilisation). The static peak keeps the highest
count seen in the window all the time. A gap between decisions counts at most
:data:`MAX_GAP` (the autoscaler was not running).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import timedelta

from pydantic import BaseModel

from actuators.autoscaler.records import DecisionRecord

MAX_GAP = timedelta(minutes=5)


class CostLine(BaseModel):
    service: str
    hours: float
    actual_replica_hours: float
    hpa_replica_hours: float
    static_peak_replica_hours: float
    actual_cost: float
    hpa_cost: float
    static_peak_cost: float
    savings_vs_hpa_pct: float | None
    savings_vs_static_peak_pct: float | None


class CostAnalysis(BaseModel):
    window_hours: float
    price_per_replica_hour: float
    services: list[CostLine]
    total: CostLine


def cost_analysis(records: list[DecisionRecord], window: timedelta, price: float) -> CostAnalysis:
    by_service: dict[str, list[DecisionRecord]] = defaultdict(list)
    for record in records:
        if record.source == "loop":
            by_service[record.service].append(record)
    lines = [
        _line(service, sorted(items, key=lambda item: item.at), price) for service, items in sorted(by_service.items())
    ]
    return CostAnalysis(
        window_hours=window.total_seconds() / 3600,
        price_per_replica_hour=price,
        services=lines,
        total=_total(lines, price),
    )


def _line(service: str, records: list[DecisionRecord], price: float) -> CostLine:
    hours = actual = hpa = 0.0
    peak = max(record.current for record in records)
    for record, following in itertools.pairwise(records):
        span_h = min(following.at - record.at, MAX_GAP).total_seconds() / 3600
        hours += span_h
        actual += record.current * span_h
        hpa += (record.reactive if record.reactive is not None else record.current) * span_h
    return _priced(service, hours, actual, hpa, peak * hours, price)


def _total(lines: list[CostLine], price: float) -> CostLine:
    return _priced(
        "all",
        max((line.hours for line in lines), default=0.0),
        sum(line.actual_replica_hours for line in lines),
        sum(line.hpa_replica_hours for line in lines),
        sum(line.static_peak_replica_hours for line in lines),
        price,
    )


def _priced(service: str, hours: float, actual: float, hpa: float, static: float, price: float) -> CostLine:
    return CostLine(
        service=service,
        hours=round(hours, 4),
        actual_replica_hours=round(actual, 4),
        hpa_replica_hours=round(hpa, 4),
        static_peak_replica_hours=round(static, 4),
        actual_cost=round(actual * price, 4),
        hpa_cost=round(hpa * price, 4),
        static_peak_cost=round(static * price, 4),
        savings_vs_hpa_pct=_savings(actual, hpa),
        savings_vs_static_peak_pct=_savings(actual, static),
    )


def _savings(actual: float, other: float) -> float | None:
    return round((1 - actual / other) * 100, 2) if other > 0 else None
