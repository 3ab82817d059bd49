"""The Great Expectations suite every series must pass before anything trains on it.

Per series: timestamps parse, strictly increase, are unique and come at a regular
step (gaps up to ``max_gap_steps`` steps tolerated); values are numbers, finite and
within plausible bounds for their metric kind; and there is enough history. Every
failure names the file, the expectation and a few offending rows (file line numbers).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from training.series import Series

# Plausible bounds per metric kind; an infinite value falls outside every one of them.
BOUNDS: dict[str, tuple[float, float]] = {
    "requests_per_s": (0.0, 1e9),
    "cpu_percent": (0.0, 12_800.0),  # up to 128 fully busy cores
    "memory_bytes": (0.0, 1e14),
    "latency_p95_ms": (0.0, 3.6e6),
    "error_rate": (0.0, 1e9),
    "unknown": (-1e15, 1e15),
}
SHOWN_ROWS = 5


@dataclass(frozen=True)
class Rules:
    min_length: int
    max_gap_steps: float = 12.0
    min_step_ratio: float = 0.5


@dataclass
class SeriesResult:
    key: str
    source: str
    success: bool
    failures: list[dict[str, Any]] = field(default_factory=list)
    gx_result: dict[str, Any] = field(default_factory=dict)

    def message(self) -> str:
        lines = [f"{self.source}: failed validation"]
        for failure in self.failures:
            lines.append(f"  - {failure['expectation']}: {failure['problem']}")
            lines.extend(f"      line {row['line']}: {row}" for row in failure["rows"])
        return "\n".join(lines)


@dataclass
class Report:
    results: list[SeriesResult]

    @property
    def success(self) -> bool:
        return all(result.success for result in self.results)

    def failed(self) -> list[SeriesResult]:
        return [result for result in self.results if not result.success]

    def summary(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "series": len(self.results),
            "failed": [{"key": r.key, "source": r.source, "failures": r.failures} for r in self.failed()],
        }


def validate(series: Sequence[Series], rules: Rules) -> Report:
    """Run the suite on every series; never raises for bad data, reports it."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    suite_runner = _SuiteRunner(rules)
    return Report([suite_runner.run(item) for item in series])


def as_frame(series: Series) -> pd.DataFrame:
    """The columns the suite looks at; ``line`` is the row's line number in its file."""
    stamps = pd.Series(series.timestamps)
    seconds = stamps.astype("int64", copy=False).where(stamps.notna()) / 1e9
    deltas = seconds.diff()
    positive = deltas[deltas > 0]
    step = float(positive.median()) if len(positive) else float("nan")
    return pd.DataFrame(
        {
            "line": np.arange(len(series)) + 2,
            "timestamp": stamps,
            "value": series.values,
            "step_ratio": deltas / step if step > 0 else deltas * np.nan,
        }
    )


class _SuiteRunner:
    """One ephemeral GX context and suite, run once per series."""

    def __init__(self, rules: Rules) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.rules = rules
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        asset = self.context.data_sources.add_pandas("series").add_dataframe_asset("frame")
        self.batch = asset.add_batch_definition_whole_dataframe("whole")
        self.definitions: dict[str, Any] = {}

    def run(self, series: Series) -> SeriesResult:
        definition = self._definition(series.metric)
        result = definition.run(
            batch_parameters={"dataframe": as_frame(series)},
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["line"]},
        )
        failures = [_failure(item) for item in result.results if not item.success]
        return SeriesResult(series.key, series.source, bool(result.success), failures, result.to_json_dict())

    def _definition(self, metric: str) -> Any:
        kind = metric if metric in BOUNDS else "unknown"
        if kind not in self.definitions:
            import great_expectations as gx

            suite = self.context.suites.add(
                gx.ExpectationSuite(name=f"series-{kind}", expectations=self._expectations(kind))
            )
            self.definitions[kind] = self.context.validation_definitions.add(
                gx.ValidationDefinition(name=f"validate-{kind}", data=self.batch, suite=suite)
            )
        return self.definitions[kind]

    def _expectations(self, kind: str) -> list[Any]:
        import great_expectations.expectations as gxe

        low, high = BOUNDS[kind]
        return [
            gxe.ExpectColumnValuesToNotBeNull(column="timestamp", meta={"problem": "timestamp does not parse"}),
            gxe.ExpectColumnValuesToBeUnique(column="timestamp", meta={"problem": "duplicated timestamp"}),
            gxe.ExpectColumnValuesToBeIncreasing(
                column="timestamp", strictly=True, meta={"problem": "timestamp not after the previous one"}
            ),
            gxe.ExpectColumnValuesToBeBetween(
                column="step_ratio",
                min_value=self.rules.min_step_ratio,
                max_value=self.rules.max_gap_steps,
                meta={"problem": f"irregular step (a gap over {self.rules.max_gap_steps:g} steps or a short step)"},
            ),
            gxe.ExpectColumnValuesToNotBeNull(column="value", meta={"problem": "value missing or not a number"}),
            gxe.ExpectColumnValuesToBeBetween(
                column="value",
                min_value=low,
                max_value=high,
                meta={"problem": f"value infinite or outside the plausible range [{low:g}, {high:g}] for {kind}"},
            ),
            gxe.ExpectTableRowCountToBeBetween(
                min_value=self.rules.min_length,
                meta={"problem": f"too short: needs at least {self.rules.min_length} points (model context + horizon)"},
            ),
        ]


def _failure(item: Any) -> dict[str, Any]:
    config = item.expectation_config
    rows = [
        {key: _plain(value) for key, value in row.items()}
        for row in (item.result.get("unexpected_index_list") or [])[:SHOWN_ROWS]
    ]
    problem = (config.meta or {}).get("problem", config.type)
    if config.type == "expect_table_row_count_to_be_between":
        problem = f"{problem}; it has {item.result.get('observed_value')}"
    elif item.result.get("unexpected_count"):
        problem = f"{problem} ({item.result['unexpected_count']} rows)"
    return {"expectation": config.type, "column": config.kwargs.get("column"), "problem": problem, "rows": rows}


def _plain(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value
