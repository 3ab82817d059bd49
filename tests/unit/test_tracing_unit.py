"""Tracing's switch and rules: off without an endpoint (nothing installed), where the endpoint comes from, sampling."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, set_span_in_context
from pydantic import ValidationError

from serving.settings import ServingSettings
from serving.tracing import bentoml_tracing
from serving.tracing import traces_endpoint as serving_endpoint
from tmsops.app import create_app
from tmsops.settings import CoreSettings, TracingSettings
from tmsops.tracing import sampler, service_name, span, traces_endpoint

EXPORTER_THREAD = "OtelBatchSpanRecordProcessor"


@pytest.fixture(autouse=True)
def no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith(("OTEL_", "TMSOPS_"))]:
        monkeypatch.delenv(name)


def test_without_an_endpoint_nothing_is_installed(tmp_path: Path) -> None:
    global_provider = trace.get_tracer_provider()
    app = create_app("svc", CoreSettings(state_dir=tmp_path), version="1")
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        with span("work", {"tmsops.service": "x"}) as current:
            assert not current.is_recording()
        assert app.state.tracing is None
        assert not getattr(app, "_is_instrumented_by_opentelemetry", False)
        assert not HTTPXClientInstrumentor().is_instrumented_by_opentelemetry
        assert EXPORTER_THREAD not in {thread.name for thread in threading.enumerate()}
    assert trace.get_tracer_provider() is global_provider


def test_an_endpoint_instruments_the_app_but_exports_only_once_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    app = create_app("svc", CoreSettings(state_dir=tmp_path), version="1")
    try:
        tracing = app.state.tracing
        assert tracing.endpoint == "http://collector:4318/v1/traces"
        assert tracing.provider.resource.attributes["service.name"] == "tmsops-svc"
        assert getattr(app, "_is_instrumented_by_opentelemetry", False)
        assert EXPORTER_THREAD not in {thread.name for thread in threading.enumerate()}
    finally:
        FastAPIInstrumentor.uninstrument_app(app)  # it patches BackgroundTask process-wide


@pytest.mark.parametrize(
    ("setting", "environment", "expected"),
    [
        (None, {}, None),
        ("http://c:4318", {}, "http://c:4318/v1/traces"),
        ("http://c:4318/", {}, "http://c:4318/v1/traces"),
        ("http://c:4318/v1/traces", {}, "http://c:4318/v1/traces"),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318"}, "http://base:4318/v1/traces"),
        (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/custom"}, "http://t:4318/custom"),
        (
            None,
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x"},
            "http://t/x",
        ),
        ("http://c:4318", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x"}, "http://c:4318/v1/traces"),
        ("http://c:4318", {"OTEL_SDK_DISABLED": "true"}, None),
    ],
)
def test_endpoint_precedence_is_the_same_for_the_services_and_the_model_server(
    setting: str | None, environment: dict[str, str], expected: str | None
) -> None:
    assert traces_endpoint(TracingSettings(otlp_endpoint=setting), environment) == expected
    assert serving_endpoint(ServingSettings(otlp_endpoint=setting), environment) == expected


def test_the_endpoint_must_be_an_http_url() -> None:
    with pytest.raises(ValidationError):
        TracingSettings(otlp_endpoint="collector:4318")


def test_service_name() -> None:
    assert service_name("chaos", TracingSettings(), {}) == "tmsops-chaos"
    assert service_name("chaos", TracingSettings(), {"OTEL_SERVICE_NAME": "from-env"}) == "from-env"
    assert service_name("chaos", TracingSettings(service_name="mine"), {"OTEL_SERVICE_NAME": "env"}) == "mine"


def test_sampling_follows_the_caller_and_never_starts_a_trace_at_an_outgoing_call() -> None:
    rule = sampler(1.0)
    trace_id = 0x1234
    assert rule.should_sample(None, trace_id, "GET /x", SpanKind.SERVER).decision is Decision.RECORD_AND_SAMPLE
    assert rule.should_sample(None, trace_id, "autoscaler.cycle").decision is Decision.RECORD_AND_SAMPLE
    assert rule.should_sample(None, trace_id, "GET", SpanKind.CLIENT).decision is Decision.DROP
    for flags, decision in ((TraceFlags.SAMPLED, Decision.RECORD_AND_SAMPLE), (TraceFlags.DEFAULT, Decision.DROP)):
        parent = set_span_in_context(NonRecordingSpan(SpanContext(trace_id, 0x99, True, TraceFlags(flags))))
        assert rule.should_sample(parent, trace_id, "GET", SpanKind.CLIENT).decision is decision
        assert sampler(0.0).should_sample(parent, trace_id, "GET /x", SpanKind.SERVER).decision is decision
    assert sampler(0.0).should_sample(None, trace_id, "GET /x", SpanKind.SERVER).decision is Decision.DROP


def test_the_model_server_gets_an_otlp_exporter_only_with_an_endpoint() -> None:
    assert bentoml_tracing(ServingSettings(), {}) == {}
    config = bentoml_tracing(ServingSettings(trace_sample_ratio=0.25), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert config["tracing"]["otlp"] == {"protocol": "http", "endpoint": "http://c:4318/v1/traces"}
    assert (config["tracing"]["exporter_type"], config["tracing"]["sample_rate"]) == ("otlp", 0.25)
