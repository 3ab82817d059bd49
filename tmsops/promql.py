"""PromQL templates of the per-service metrics, one built-in set per target kind.

A template names one metric (``requestsPerSecond``, ``cpuCores``, ``memoryBytes``,
``p95LatencyMs``, ``errorRate``, ``readyReplicas``) and holds placeholders that are filled in
at rendering: ``{service}`` and ``{namespace}`` as escaped PromQL string contents (put them
between double quotes), ``{serviceRegex}`` as the service name escaped for a regular
expression and then for a string (for ``=~`` matchers), and ``{window}`` as a PromQL duration
(``1m``, ``30s``). Nothing else in braces is touched, so label matchers need no escaping; a
lone ``{name}`` that is not a placeholder is refused, since it is not valid PromQL either.

The ``fleet`` set reads the metric names of :mod:`tmsops.fleet.metrics`; the ``kubernetes``
set reads cAdvisor, kube-state-metrics and Istio's standard metrics.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from pydantic.alias_generators import to_camel

from tmsops.errors import PermanentError
from tmsops.fleet import metrics as fleet

if TYPE_CHECKING:
    from tmsops.settings import CoreSettings

TargetKind = Literal["fleet", "kubernetes"]
METRICS = ("requestsPerSecond", "cpuCores", "memoryBytes", "p95LatencyMs", "errorRate", "readyReplicas")
PLACEHOLDERS = ("service", "serviceRegex", "namespace", "window")

_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
_ANY_PLACEHOLDER = re.compile(r"\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}")
_STRING_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_WINDOW_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1))


class TemplateError(PermanentError):
    """A PromQL template, an override or a metric name that cannot be used; the message names it."""


def _fleet_templates() -> dict[str, str]:
    requests = f'{fleet.REQUESTS}_total{{service="{{service}}"}}'
    errors = f'{fleet.REQUESTS}_total{{service="{{service}}",code=~"5.."}}'
    buckets = f'{fleet.DURATION}_bucket{{service="{{service}}"}}'
    return {
        "requestsPerSecond": f"sum(rate({requests}[{{window}}]))",
        "cpuCores": f'sum({fleet.CPU_CORES}{{service="{{service}}"}})',
        "memoryBytes": f'sum({fleet.MEMORY_BYTES}{{service="{{service}}"}})',
        "p95LatencyMs": f"1000 * histogram_quantile(0.95, sum by (le) (rate({buckets}[{{window}}])))",
        "errorRate": f"(sum(rate({errors}[{{window}}])) or vector(0)) / sum(rate({requests}[{{window}}]))",
        "readyReplicas": f'sum({fleet.READY_REPLICAS}{{service="{{service}}"}})',
    }


def _kubernetes_templates() -> dict[str, str]:
    istio = 'reporter="destination",destination_workload_namespace="{namespace}",destination_workload="{service}"'
    pods = 'namespace="{namespace}",pod=~"{serviceRegex}-[a-z0-9]+-[a-z0-9]+",container!=""'
    return {
        "requestsPerSecond": f"sum(rate(istio_requests_total{{{istio}}}[{{window}}]))",
        "cpuCores": f"sum(rate(container_cpu_usage_seconds_total{{{pods}}}[{{window}}]))",
        "memoryBytes": f"sum(container_memory_working_set_bytes{{{pods}}})",
        "p95LatencyMs": (
            f"histogram_quantile(0.95, sum by (le) (rate(istio_request_duration_milliseconds_bucket{{{istio}}}"
            f"[{{window}}])))"
        ),
        "errorRate": (
            f'(sum(rate(istio_requests_total{{{istio},response_code=~"5.."}}[{{window}}])) or vector(0))'
            f" / sum(rate(istio_requests_total{{{istio}}}[{{window}}]))"
        ),
        "readyReplicas": 'sum(kube_deployment_status_replicas_ready{namespace="{namespace}",deployment="{service}"})',
    }


BUILT_IN: Mapping[TargetKind, Mapping[str, str]] = MappingProxyType(
    {"fleet": MappingProxyType(_fleet_templates()), "kubernetes": MappingProxyType(_kubernetes_templates())}
)


def escape_string(value: str) -> str:
    """``value`` as the contents of a double-quoted PromQL string: backslash, quote and line breaks escaped."""
    return "".join(_STRING_ESCAPES.get(char, char) for char in value)


def escape_regex(value: str) -> str:
    """``value`` as a literal RE2 pattern: every ASCII character but letters and digits backslash-escaped."""
    return "".join(f"\\{char}" if char.isascii() and not char.isalnum() else char for char in value)


def render_window(window: timedelta) -> str:
    """A PromQL duration, largest unit first: 60 s -> ``1m``, 90 s -> ``1m30s``, 1.5 s -> ``1s500ms``."""
    remaining = round(window.total_seconds() * 1000)
    if remaining < 1:
        raise TemplateError(f"the metrics window must be at least 1 ms, got {window}")
    parts = []
    for unit, size in _WINDOW_UNITS:
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def metric_key(name: str) -> str:
    """The camelCase template name of ``name`` (``p95_latency_ms`` -> ``p95LatencyMs``); unknown names refused."""
    key = name if name in METRICS else to_camel(name)
    if key not in METRICS:
        raise TemplateError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}", details={"metric": name})
    return key


def check_template(name: str, template: str) -> None:
    """Refuse an empty template or one with a ``{placeholder}`` other than those in PLACEHOLDERS."""
    if not template.strip():
        raise TemplateError(f"the PromQL template of {name} is empty", details={"metric": name})
    for match in _ANY_PLACEHOLDER.finditer(template):
        if match.group(1) not in PLACEHOLDERS:
            known = ", ".join(f"{{{item}}}" for item in PLACEHOLDERS)
            message = f"the PromQL template of {name} has an unknown placeholder {match.group(0)}; known: {known}"
            raise TemplateError(message, details={"metric": name, "placeholder": match.group(1)})


def _override_key(name: str) -> str:
    try:
        return metric_key(name)
    except TemplateError as error:
        message = f"metrics.templates.{name}: unknown metric; known metrics: {', '.join(METRICS)}"
        raise TemplateError(message, details={"metric": name}) from error


@dataclass(frozen=True)
class PromqlTemplates:
    """The PromQL of every metric for one target kind, with the window and namespace to fill in."""

    kind: TargetKind
    templates: Mapping[str, str]
    window: timedelta = timedelta(minutes=1)
    namespace: str = "default"
    _window_text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        missing = [name for name in METRICS if name not in self.templates]
        if missing:
            raise TemplateError(f"PromQL templates missing for {', '.join(missing)}", details={"missing": missing})
        for name, template in self.templates.items():
            if name not in METRICS:
                raise TemplateError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
            check_template(name, template)
        object.__setattr__(self, "templates", MappingProxyType(dict(self.templates)))
        object.__setattr__(self, "_window_text", render_window(self.window))

    @classmethod
    def built_in(
        cls,
        kind: TargetKind,
        *,
        window: timedelta = timedelta(minutes=1),
        namespace: str = "default",
        overrides: Mapping[str, str] | None = None,
    ) -> PromqlTemplates:
        """The built-in set of ``kind`` with ``overrides`` (camelCase or snake_case metric names) applied."""
        if kind not in BUILT_IN:
            raise TemplateError(f"no PromQL templates for target kind {kind!r}; known: {', '.join(BUILT_IN)}")
        templates = dict(BUILT_IN[kind])
        templates.update({_override_key(name): text for name, text in (overrides or {}).items()})
        return cls(kind, templates, window=window, namespace=namespace)

    @classmethod
    def fleet(cls, *, window: timedelta = timedelta(minutes=1)) -> PromqlTemplates:
        """The set for the local fleet's metrics."""
        return cls.built_in("fleet", window=window)

    @classmethod
    def kubernetes(cls, *, window: timedelta = timedelta(minutes=1), namespace: str = "default") -> PromqlTemplates:
        """The set for cAdvisor, kube-state-metrics and Istio metrics in ``namespace``."""
        return cls.built_in("kubernetes", window=window, namespace=namespace)

    @classmethod
    def from_settings(cls, settings: CoreSettings) -> PromqlTemplates:
        """The set of the configured target kind, window, namespace and ``metrics.templates`` overrides."""
        return cls.built_in(
            settings.target.kind,
            window=settings.metrics.window,
            namespace=settings.target.kubernetes.namespace,
            overrides=settings.metrics.templates,
        )

    @property
    def window_text(self) -> str:
        """The window as a PromQL duration (``1m``)."""
        return self._window_text

    def render(self, metric: str, service: str) -> str:
        """The PromQL of ``metric`` for ``service``; an empty service name is refused."""
        if not service:
            raise TemplateError("the service name is empty")
        values = {
            "service": escape_string(service),
            "serviceRegex": escape_string(escape_regex(service)),
            "namespace": escape_string(self.namespace),
            "window": self._window_text,
        }
        template = self.templates[metric_key(metric)]
        return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)

    def render_all(self, service: str) -> dict[str, str]:
        """The PromQL of every metric for ``service``, by camelCase metric name."""
        return {metric: self.render(metric, service) for metric in METRICS}
