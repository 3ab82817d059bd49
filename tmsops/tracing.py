"""OpenTelemetry traces of the tmsops services, exported over OTLP/HTTP when an endpoint is configured.

When tracing is on (:class:`tmsops.settings.TracingSettings` says how it is switched on):

- every request to a service's API is a server span named by its route template
  (``GET /services/{name}``) that continues the caller's trace (W3C ``traceparent``);
  ``/health`` and ``/metrics`` are left out, so probes and scrapes make no spans;
- every outgoing httpx call (model server, fleet control API, Prometheus) made inside a trace
  is a client span that passes ``traceparent`` on; a call made outside any trace (a health
  probe, a poller) starts no trace of its own;
- a few units of our own work are spans (:func:`span`): an autoscaler decision cycle, a chaos
  experiment run, an optimizer change.

With no endpoint nothing is installed: no provider, no exporter thread, no middleware, and
:func:`span` is OpenTelemetry's no-op. Otherwise the provider is made with the app, exports
(a batch processor) from the app's start, and is flushed and shut down when the app stops.
One traced app per process: the first one started becomes the process's global tracer provider.
The SDK, the exporter and the instrumentations are imported only when tracing is on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.util.types import AttributeValue

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler

    from tmsops.settings import TracingSettings

TRACES_PATH = "/v1/traces"
# Matched (re.search) against scheme://host/path of each request; comma-separated regexes.
EXCLUDED_URLS = r"://[^/]+/(health|metrics)$"
TRACER_NAME = "tmsops"

log = logging.getLogger("tmsops.tracing")


def traces_endpoint(settings: TracingSettings, environ: Mapping[str, str] = os.environ) -> str | None:
    """Where to send spans (the full ``.../v1/traces`` URL), or None: tracing off.

    Precedence: ``OTEL_SDK_DISABLED=true`` (off), then ``tracing.otlpEndpoint`` (from the file or
    ``TMSOPS_TRACING__OTLP_ENDPOINT``), then ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (as is, as the
    OpenTelemetry specification says), then ``OTEL_EXPORTER_OTLP_ENDPOINT`` (a base URL).
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if settings.otlp_endpoint:
        return signal_url(settings.otlp_endpoint)
    if traces := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        return traces
    if base := environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        return signal_url(base)
    return None


def signal_url(base: str) -> str:
    """``http://collector:4318`` -> ``http://collector:4318/v1/traces``; a URL already ending so is kept."""
    base = base.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def service_name(name: str, settings: TracingSettings, environ: Mapping[str, str] = os.environ) -> str:
    """``tracing.serviceName``, else ``OTEL_SERVICE_NAME``, else ``tmsops-<name>``."""
    return settings.service_name or environ.get("OTEL_SERVICE_NAME", "").strip() or f"tmsops-{name}"


class Tracing:
    """The tracing of one app: its provider, exporting between :meth:`start` and :meth:`stop`."""

    def __init__(self, endpoint: str, provider: TracerProvider) -> None:
        self.endpoint = endpoint
        self.provider = provider

    def start(self) -> None:
        """Export in batches to the endpoint; trace outgoing httpx calls; be the global provider if none is."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=self.endpoint)))
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(self.provider)
        else:
            log.warning("a tracer provider is already installed in this process; tmsops spans go to it")
        HTTPXClientInstrumentor().instrument(tracer_provider=self.provider)
        log.info("tracing to %s", self.endpoint)

    def stop(self) -> None:
        """Stop tracing httpx calls; export what is left and shut the exporter down."""
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor().uninstrument()
        self.provider.shutdown()


def install_tracing(app: FastAPI, name: str, settings: TracingSettings, *, version: str) -> Tracing | None:
    """Trace ``app``'s requests if an endpoint is configured; None (and nothing installed) otherwise."""
    endpoint = traces_endpoint(settings)
    if endpoint is None:
        return None
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider

    resource = Resource.create({SERVICE_NAME: service_name(name, settings), SERVICE_VERSION: version})
    provider = TracerProvider(sampler=sampler(settings.sample_ratio), resource=resource)
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, excluded_urls=EXCLUDED_URLS, exclude_spans=["receive", "send"]
    )
    return Tracing(endpoint, provider)


def sampler(ratio: float) -> Sampler:
    """Follow the caller's decision; a new trace is kept at ``ratio``, but never started by an outgoing call.

    A trace starts at a request to a service or at a unit of our own work. An outgoing call
    with no trace around it (a health probe, a background poller) is not worth a trace of its
    own: it is dropped, and the ``traceparent`` it sends says "not sampled".
    """
    from opentelemetry.sdk.trace.sampling import Decision, ParentBased, SamplingResult, TraceIdRatioBased
    from opentelemetry.trace import Link, SpanKind, TraceState
    from opentelemetry.util.types import Attributes

    class NoOutgoingRoots(TraceIdRatioBased):
        def should_sample(
            self,
            parent_context: Context | None,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Attributes = None,
            links: Sequence[Link] | None = None,
            trace_state: TraceState | None = None,
        ) -> SamplingResult:
            if kind is SpanKind.CLIENT:
                return SamplingResult(Decision.DROP)
            return super().should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"NoOutgoingRoots{{{self.rate}}}"

    return ParentBased(root=NoOutgoingRoots(ratio))


@contextmanager
def span(
    name: str, attributes: Mapping[str, AttributeValue] | None = None, *, new_trace: bool = False
) -> Iterator[trace.Span]:
    """A span of our own work, current inside the block; exceptions are recorded on it.

    ``new_trace``: start a trace of its own, linked to the current span (for long background
    work started by a request, such as a chaos experiment, that would outlive the request's trace).
    """
    context, links = None, []
    if new_trace:
        current = trace.get_current_span().get_span_context()
        context, links = Context(), ([trace.Link(current)] if current.is_valid else [])
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(name, context=context, attributes=attributes, links=links) as current_span:
        yield current_span
