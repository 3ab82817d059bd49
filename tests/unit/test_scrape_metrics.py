"""Metrics read at scrape time: gauges and counters from a function, and a failing one left out."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import generate_latest

from tmsops.scrape_metrics import ScrapeMetric, Values, scrape_registry


def test_gauges_and_counters_are_read_when_scraped() -> None:
    changes = {("web", "applied"): 2.0}
    registry = scrape_registry(
        [
            ScrapeMetric("demo_replicas", "Replicas", ("service",), lambda: {("web",): 3.0, ("api",): 1.0}),
            ScrapeMetric("demo_changes", "Changes", ("service", "outcome"), lambda: changes, kind="counter"),
        ]
    )
    first = generate_latest(registry).decode()
    assert 'demo_replicas{service="api"} 1.0' in first and 'demo_replicas{service="web"} 3.0' in first
    assert "# TYPE demo_changes_total counter" in first
    assert 'demo_changes_total{outcome="applied",service="web"} 2.0' in first
    changes[("web", "applied")] = 5.0
    assert 'demo_changes_total{outcome="applied",service="web"} 5.0' in generate_latest(registry).decode()


def test_a_metric_that_cannot_be_read_is_left_out_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> Values:
        raise RuntimeError("the journal is locked")

    registry = scrape_registry(
        [
            ScrapeMetric("demo_broken", "Cannot be read", (), broken),
            ScrapeMetric("demo_fine", "Can be read", (), lambda: {(): 1.0}),
        ]
    )
    with caplog.at_level(logging.WARNING, logger="tmsops.scrape_metrics"):
        text = generate_latest(registry).decode()
    assert "demo_broken" not in text and "demo_fine 1.0" in text
    assert "metric demo_broken could not be read: RuntimeError('the journal is locked')" in caplog.text
