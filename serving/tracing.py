"""Tracing of the model server: BentoML's own OpenTelemetry support, exporting over OTLP/HTTP.

BentoML wraps every request in OpenTelemetry's ASGI middleware, which continues the caller's
trace from its ``traceparent`` header; :func:`bentoml_tracing` only gives it an exporter, so
``POST /forecast`` and ``POST /detect`` (and ``/model-info``, ``/reload``) become server spans
of the service ``tmsops-models`` (``OTEL_SERVICE_NAME`` overrides it) in the caller's trace.
Probes and scrapes (``/livez``, ``/readyz``, ``/metrics``) are left out.

Switched on as the tmsops services are (serving imports nothing of them, so this mirrors
``tmsops.tracing.traces_endpoint``): ``OTEL_SDK_DISABLED=true`` keeps it off; else
``TMSOPS_SERVING_OTLP_ENDPOINT`` (a base URL), else ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (as
is), else ``OTEL_EXPORTER_OTLP_ENDPOINT`` (a base URL); none of them: no exporter.
``TMSOPS_SERVING_TRACE_SAMPLE_RATIO`` samples the traces that start here; a caller's decision
is always followed. BentoML builds the exporter when a server worker starts, not at import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from serving.settings import ServingSettings

TRACES_PATH = "/v1/traces"
EXCLUDED_URLS = [r"://[^/]+/(livez|readyz|healthz|metrics)$"]


def traces_endpoint(settings: ServingSettings, environ: Mapping[str, str] = os.environ) -> str | None:
    """The full ``.../v1/traces`` URL to export to, or None: tracing off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if settings.otlp_endpoint:
        return _signal_url(settings.otlp_endpoint)
    if traces := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        return traces
    if base := environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        return _signal_url(base)
    return None


def _signal_url(base: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def bentoml_tracing(settings: ServingSettings, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The ``@bentoml.service`` keyword arguments for tracing: ``{"tracing": {...}}``, or none when off."""
    endpoint = traces_endpoint(settings, environ)
    if endpoint is None:
        return {}
    config = {
        "exporter_type": "otlp",
        "sample_rate": float(settings.trace_sample_ratio),
        "excluded_urls": EXCLUDED_URLS,
        "otlp": {"protocol": "http", "endpoint": endpoint},
    }
    return {"tracing": config}
