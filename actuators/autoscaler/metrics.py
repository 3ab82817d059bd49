"""The autoscaler's own metrics, read from the loop when Prometheus scrapes: per service, the
last decision (replicas, the count asked for, the forecast peak, the capacity learned, whether
it had no usable forecast) and the changes of the count the loop decided, by outcome."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tmsops.scrape_metrics import ScrapeMetric, Values

if TYPE_CHECKING:
    from actuators.autoscaler.loop import Autoscaler
    from actuators.autoscaler.policy import Decision


def autoscaler_metrics(scaler: Autoscaler) -> list[ScrapeMetric]:
    def last(value: Callable[[Decision], float | None]) -> Callable[[], Values]:
        def read() -> Values:
            # a copy first: a scrape may run in a worker thread while the loop adds services
            decisions = {name: state.decision for name, state in list(scaler.services.items()) if state.decision}
            values = {name: value(decision) for name, decision in decisions.items()}
            return {(name,): float(number) for name, number in values.items() if number is not None}

        return read

    service = ("service",)
    return [
        ScrapeMetric(
            "tmsops_autoscaler_replicas", "Replicas at the service's last decision", service, last(lambda d: d.current)
        ),
        ScrapeMetric(
            "tmsops_autoscaler_desired_replicas",
            "Replicas the service's last decision asked for",
            service,
            last(lambda d: d.desired),
        ),
        ScrapeMetric(
            "tmsops_autoscaler_forecast_peak_requests_per_second",
            "Forecast peak demand over the lead time, at the service's last decision",
            service,
            last(lambda d: d.forecast_peak),
        ),
        ScrapeMetric(
            "tmsops_autoscaler_capacity_per_replica_requests_per_second",
            "Demand one replica serves at the CPU target, as learned",
            service,
            last(lambda d: d.capacity),
        ),
        ScrapeMetric(
            "tmsops_autoscaler_reactive_only",
            "1 when the service's last decision had no usable forecast (its reason says why)",
            service,
            last(lambda d: 1.0 if d.fallback else 0.0),
        ),
        ScrapeMetric(
            "tmsops_autoscaler_loop_changes",
            "Changes of a service's replica count the loop decided since it started, by outcome: applied, "
            "failed, or recommended (forecastOnly: each new count recommended, once)",
            ("service", "outcome"),
            lambda: {key: float(count) for key, count in list(scaler.changes.items())},
            kind="counter",
        ),
    ]
