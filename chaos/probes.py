"""Steady-state probes: HTTP, Prometheus and the anomaly model; a round runs every probe at once.

A probe never raises: an error (a refused connection, Prometheus down, the model server down)
is a failed probe whose detail says why, since a steady state that cannot be observed is not
known to hold. Decisions:

- HTTP: one request; passes on the expected status within ``maxLatencyMs`` (when given).
- Prometheus: an instant query; passes when it returns at least one sample and every sample is
  within ``tolerance`` (absolute) of ``expected``; ``value`` is the sample farthest from it.
- Anomaly: the metric's history over ``window`` (Prometheus range query with the target kind's
  template, every ``step``) is sent to the model server's ``/detect``; passes when none of the
  last ``lastPoints`` points is flagged; fails with fewer than ``minPoints`` finite points.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from chaos.experiment import AnomalyProbe, HttpProbe, Probe, PrometheusProbe
from tmsops.errors import TmsopsError
from tmsops.metrics_source import PrometheusSource
from tmsops.model_client import ModelClient, SeriesIn

log = logging.getLogger("chaos.probes")


@dataclass(frozen=True)
class ProbeResult:
    probe: str
    type: str
    ok: bool
    detail: str
    value: float | None = None
    duration_ms: float = 0.0
    weight: float = 1.0
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def row(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "probe": self.probe,
            "type": self.type,
            "ok": self.ok,
            "value": self.value if self.value is None or math.isfinite(self.value) else None,
            "detail": self.detail[:2000],
            "duration_ms": self.duration_ms,
            "weight": self.weight,
        }


class ProbeRunner:
    """Runs probes with shared clients: HTTP, the Prometheus API and the model server."""

    def __init__(self, prometheus: PrometheusSource, models: ModelClient) -> None:
        self.prometheus = prometheus
        self.models = models
        self._http = httpx.AsyncClient(follow_redirects=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def round(self, probes: Sequence[Probe]) -> list[ProbeResult]:
        """Every probe once, concurrently, in the order given."""
        return list(await asyncio.gather(*(self.run(probe) for probe in probes)))

    async def run(self, probe: Probe) -> ProbeResult:
        started = time.perf_counter()
        try:
            ok, value, detail = await self._evaluate(probe)
        except (TmsopsError, httpx.HTTPError, OSError, ValueError) as error:
            ok, value, detail = False, None, f"{type(error).__name__}: {error}"
        except Exception as error:  # a probe never raises: an unexpected error is a failed probe, logged
            log.exception("probe %s failed unexpectedly", probe.name)
            ok, value, detail = False, None, f"{type(error).__name__}: {error}"
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        return ProbeResult(probe.name, probe.type, ok, detail, value, elapsed_ms, probe.weight)

    async def _evaluate(self, probe: Probe) -> tuple[bool, float | None, str]:
        if isinstance(probe, HttpProbe):
            return await self._http_probe(probe)
        if isinstance(probe, PrometheusProbe):
            return await self._prometheus_probe(probe)
        return await self._anomaly_probe(probe)

    async def _http_probe(self, probe: HttpProbe) -> tuple[bool, float | None, str]:
        started = time.perf_counter()
        response = await self._http.request(probe.method, probe.url, timeout=probe.timeout.total_seconds())
        latency_ms = (time.perf_counter() - started) * 1000
        problems = []
        if response.status_code != probe.expected_status:
            problems.append(f"status {response.status_code}, expected {probe.expected_status}")
        if probe.max_latency_ms is not None and latency_ms > probe.max_latency_ms:
            problems.append(f"{latency_ms:.0f} ms, over {probe.max_latency_ms:g} ms")
        detail = "; ".join(problems) or f"status {response.status_code} in {latency_ms:.0f} ms"
        return not problems, latency_ms, detail

    async def _prometheus_probe(self, probe: PrometheusProbe) -> tuple[bool, float | None, str]:
        samples = await self.prometheus.query(probe.query)
        if not samples:
            return False, None, "the query returned no sample"
        worst = max(samples, key=lambda sample: _distance(sample.value, probe.expected))
        ok = _distance(worst.value, probe.expected) <= probe.tolerance
        verdict = "within" if ok else "outside"
        detail = f"{worst.value:g} is {verdict} {probe.expected:g} ± {probe.tolerance:g} ({len(samples)} samples)"
        return ok, worst.value, detail

    async def _anomaly_probe(self, probe: AnomalyProbe) -> tuple[bool, float | None, str]:
        end = datetime.now(UTC)
        points = await self.prometheus.service_history(probe.service, probe.metric, end - probe.window, end, probe.step)
        values = [value for _, value in points if math.isfinite(value)]
        if len(values) < probe.min_points:
            return False, None, f"only {len(values)} points of {probe.metric}; the probe needs {probe.min_points}"
        detection = (await self.models.detect([SeriesIn(id=probe.service, values=values)]))[0]
        recent = range(len(values) - probe.last_points, len(values))
        flagged = sorted(set(detection.anomalies) & set(recent))
        score = detection.scores[-1] if detection.scores else None
        if flagged:
            return False, score, f"{len(flagged)} of the last {probe.last_points} points flagged by the detector"
        return True, score, f"no anomaly in the last {probe.last_points} of {len(values)} points"


def _distance(value: float, expected: float) -> float:
    return abs(value - expected) if math.isfinite(value) else math.inf


def round_ok(results: Sequence[ProbeResult]) -> bool:
    return all(result.ok for result in results)


def failures(results: Sequence[ProbeResult]) -> str:
    return "; ".join(f"{result.probe}: {result.detail}" for result in results if not result.ok)
