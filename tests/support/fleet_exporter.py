"""A process exporting the local fleet's metric names with known, steady values.

Run it as a script: it prints its port, then serves ``/metrics`` from
:class:`tmsops.fleet.metrics.FleetMetrics` until killed. Counters grow at exactly the
rates in SERVICES (whole requests, paced by the clock, not by sleeps); every request
is observed in the latency histogram at the service's latency; gauges are constant.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app

from tmsops.fleet.metrics import FleetMetrics


@dataclass(frozen=True)
class ExportedService:
    """What the exporter serves for one service."""

    ok_per_s: float
    errors_per_s: float
    latency_s: float
    cpu_cores: float
    memory_bytes: float
    ready_replicas: float

    @property
    def requests_per_s(self) -> float:
        return self.ok_per_s + self.errors_per_s


WEIRD = 'we"ird\\svc'  # a service name with a double quote and a backslash
SERVICES = {
    "orders": ExportedService(9.0, 1.0, 0.040, 0.75, 256 * 2**20, 3.0),
    "billing": ExportedService(4.0, 0.0, 0.200, 0.25, 64 * 2**20, 1.0),
    WEIRD: ExportedService(2.0, 0.0, 0.004, 0.5, 32 * 2**20, 2.0),
}
TICK_S = 0.05


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _create_series(metrics: FleetMetrics) -> None:
    """Every series from the start (counters at 0); no 5xx series for a service without errors."""
    for name, service in SERVICES.items():
        metrics.requests.labels(service=name, code="200")
        if service.errors_per_s:
            metrics.requests.labels(service=name, code="500")
        metrics.duration.labels(service=name)
        metrics.cpu_cores.labels(service=name).set(service.cpu_cores)
        metrics.memory_bytes.labels(service=name).set(service.memory_bytes)
        metrics.ready_replicas.labels(service=name).set(service.ready_replicas)


def _count(metrics: FleetMetrics, name: str, code: str, new: int, latency_s: float) -> None:
    if new:
        metrics.requests.labels(service=name, code=code).inc(new)
    for _ in range(new):
        metrics.duration.labels(service=name).observe(latency_s)


def _run_traffic(metrics: FleetMetrics) -> None:
    """Count requests so that each counter equals floor(elapsed seconds * rate) at every tick."""
    started = time.monotonic()
    done = {(name, code): 0 for name in SERVICES for code in ("200", "500")}
    while True:
        elapsed = time.monotonic() - started
        for name, service in SERVICES.items():
            for code, rate in (("200", service.ok_per_s), ("500", service.errors_per_s)):
                target = math.floor(elapsed * rate)
                _count(metrics, name, code, target - done[name, code], service.latency_s)
                done[name, code] = target
        time.sleep(TICK_S)


def main() -> None:
    metrics = FleetMetrics()
    _create_series(metrics)
    threading.Thread(target=_run_traffic, args=(metrics,), daemon=True).start()
    server = make_server("127.0.0.1", 0, make_wsgi_app(metrics.registry), handler_class=_QuietHandler)
    print(server.server_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
