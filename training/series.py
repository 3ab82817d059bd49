"""The in-memory form every loader produces and every stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Metric kinds the validation suite knows bounds for; anything else is "unknown".
METRIC_KINDS = ("requests_per_s", "cpu_percent", "memory_bytes", "latency_p95_ms", "error_rate", "unknown")

Window = tuple[np.datetime64, np.datetime64]


@dataclass(frozen=True)
class Series:
    """One metric series, in time order as read (validation checks the order).

    ``key`` identifies the series in NAB style: ``<category>/<name>`` without ``.csv``
    (for a service trace: ``<service>/<metric>``). ``source`` is what an error message
    should name (a file path or a PromQL query). ``windows`` are labelled anomaly
    windows, inclusive, possibly empty.
    """

    key: str
    timestamps: np.ndarray  # datetime64[ns]
    values: np.ndarray  # float64
    metric: str = "unknown"
    source: str = ""
    windows: tuple[Window, ...] = field(default=())

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def category(self) -> str:
        return self.key.rsplit("/", 1)[0] if "/" in self.key else ""

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


def metric_kind(name: str) -> str:
    """Guess the metric kind from a series or column name (used for plausibility bounds)."""
    lowered = name.lower()
    rules = (
        ("requests_per_s", ("request", "rps", "qps", "throughput")),
        ("cpu_percent", ("cpu",)),
        ("memory_bytes", ("memory", "mem_", "rss")),
        ("latency_p95_ms", ("latency", "p95", "duration")),
        ("error_rate", ("error",)),
    )
    for kind, needles in rules:
        if any(needle in lowered for needle in needles):
            return kind
    return "unknown"
