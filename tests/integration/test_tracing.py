"""Tracing across real processes: the autoscaler, the fleet's control API and the model server, into one OTLP receiver.

The receiver is the collector side of OTLP/HTTP (tests/support/otlp.py): the processes export
to it as they would to an OpenTelemetry Collector. The autoscaler's decision cycle is the root of
a trace that reaches the fleet (``GET /services/{name}``) and the model server (``POST /forecast``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml
from support.model_server import model_server
from support.net import free_port
from support.otlp import CLIENT, SERVER, OtlpReceiver, ReceivedSpan, ancestors, by_id

from tmsops.fleet.replica import die_with_parent

pytestmark = pytest.mark.xdist_group("model-server")

REPO = Path(__file__).resolve().parents[2]
AUTOSCALER, FLEET, MODELS = "tmsops-autoscaler", "tmsops-fleet", "tmsops-models"
UNTRACED_PATHS = ("/health", "/metrics", "/readyz", "/livez")


@pytest.fixture(autouse=True)
def own_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """None of the developer's OTEL_* variables; exports every 100 ms (the processes inherit the environment)."""
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")


@contextmanager
def process(args: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A tmsops process in its own session; SIGTERM (its spans flushed) after, SIGKILL if it lingers."""
    with log.open("ab") as sink:
        child = subprocess.Popen(
            args,
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
    try:
        yield child
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()


def wait_until_answering(url: str, child: subprocess.Popen[bytes], log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.poll() is not None:
            pytest.fail(f"{url}: the process exited with {child.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def settings_file(tmp_path: Path, receiver: str, models: str, autoscaler_port: int, control_port: int) -> Path:
    settings = {
        "stateDir": str(tmp_path / "state"),
        "modelServerUrl": models,
        "ports": {"autoscaler": autoscaler_port},
        "target": {"fleet": {"url": f"http://127.0.0.1:{control_port}"}},
        "tracing": {"otlpEndpoint": receiver},
        "fleet": {
            "controlPort": control_port,
            "usageInterval": "500ms",
            "services": {
                "echo": {"command": ["{python}", "-m", "tmsops.fleet.echo"], "port": free_port(), "cpuRequest": "100m"}
            },
        },
        "scaling": {"interval": "100ms", "forecastStep": "100ms"},
    }
    path = tmp_path / "tmsops.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def forecast_from_a_cycle(spans: list[ReceivedSpan]) -> tuple[ReceivedSpan, ReceivedSpan, ReceivedSpan] | None:
    """(cycle, client call, model server span) of a forecast made in an autoscaler decision cycle."""
    index = by_id(spans)
    for served in spans:
        if (served.service, served.name, served.kind) != (MODELS, "POST /forecast", SERVER):
            continue
        call = index.get(served.parent_span_id)
        if call is None or (call.service, call.kind) != (AUTOSCALER, CLIENT):
            continue
        cycle = next((span for span in ancestors(call, spans) if span.name == "autoscaler.cycle"), None)
        if cycle is not None:
            return cycle, call, served
    return None


def test_a_decision_cycle_is_one_trace_across_the_services_and_health_and_metrics_are_not_traced(
    champion_registry: str, tmp_path: Path
) -> None:
    autoscaler_port, control_port = free_port(), free_port()
    with (
        OtlpReceiver() as receiver,
        model_server(champion_registry, tmp_path / "serve.log", otlp_endpoint=receiver.url) as models,
    ):
        config = settings_file(tmp_path, receiver.url, models, autoscaler_port, control_port)
        env = {**os.environ, "TMSOPS_CONFIG": str(config)}
        fleet_log, autoscaler_log = tmp_path / "fleet.log", tmp_path / "autoscaler.log"
        with process([sys.executable, "-m", "tmsops.fleet", "run"], fleet_log, env) as fleet:
            wait_until_answering(f"http://127.0.0.1:{control_port}/services/echo", fleet, fleet_log)
            with process([sys.executable, "-m", "actuators.autoscaler"], autoscaler_log, env) as autoscaler:
                autoscaler_url = f"http://127.0.0.1:{autoscaler_port}"
                wait_until_answering(f"{autoscaler_url}/health", autoscaler, autoscaler_log)

                # One trace: the cycle -> its call -> the model server's span, parented by that call.
                cycle, call, served = receiver.wait_for(forecast_from_a_cycle, "forecast traced from a cycle", 90)
                assert cycle.service == AUTOSCALER and cycle.parent_span_id == ""
                assert call.trace_id == served.trace_id == cycle.trace_id
                assert served.parent_span_id == call.span_id

                # The fleet continues the same traces; its server spans are named by the route template.
                def fleet_span_in_a_cycle(spans: list[ReceivedSpan]) -> ReceivedSpan | None:
                    cycles = {span.trace_id for span in spans if span.name == "autoscaler.cycle"}
                    return next(
                        (
                            span
                            for span in spans
                            if (span.service, span.kind, span.name) == (FLEET, SERVER, "GET /services/{name}")
                            and span.trace_id in cycles
                        ),
                        None,
                    )

                fleet_span = receiver.wait_for(fleet_span_in_a_cycle, "fleet span in a cycle's trace")
                assert by_id(receiver.spans())[fleet_span.parent_span_id].service == AUTOSCALER

                # Probes and scrapes of every process, then spans that started after them from each:
                # an export is in the order spans end, so any span of those requests has arrived by then.
                for url in (autoscaler_url, f"http://127.0.0.1:{control_port}"):
                    assert httpx.get(f"{url}/health", timeout=30).status_code == 200
                    assert httpx.get(f"{url}/metrics", timeout=30).status_code == 200
                for path in ("/readyz", "/livez", "/metrics"):
                    assert httpx.get(f"{models}{path}", timeout=30).status_code == 200
                after = time.time_ns()
                for service in (AUTOSCALER, FLEET, MODELS):
                    receiver.wait_for(
                        lambda spans, service=service: next(
                            (s for s in spans if s.service == service and s.start_ns > after), None
                        ),
                        f"span from {service} after the probes",
                    )

    spans = receiver.spans()
    untraced = [span for span in spans if any(span.mentions(path) for path in UNTRACED_PATHS)]
    assert untraced == [], [(span.service, span.name, span.attributes) for span in untraced[:5]]
    assert {AUTOSCALER, FLEET, MODELS} <= {span.service for span in spans}
