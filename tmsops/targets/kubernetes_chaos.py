"""Chaos Mesh custom resources (chaos-mesh.org/v1alpha1) for tmsops faults, and back.

Each fault becomes one resource named ``tmsops-<id>`` whose ``duration`` is the fault's TTL, so
Chaos Mesh ends it by itself. Labels and annotations carry everything needed to rebuild the
:class:`~tmsops.targets.model.Fault` from a listing.

Mapping, and where Chaos Mesh cannot say exactly what the fault means:

- network_latency -> NetworkChaos ``delay`` on the pods' outgoing packets (the responses).
- bandwidth_limit -> NetworkChaos ``bandwidth`` (``rate`` in bytes per second, ``kbps`` = 1000 B/s).
- connection_reset -> NetworkChaos ``loss`` of ``probability`` x 100 percent of the packets: Chaos Mesh
  has no TCP reset action; dropped packets are the closest (clients see timeouts, not resets).
- service_unavailable ``error`` -> HTTPChaos replacing the status code of every response with
  ``status`` (HTTPChaos has no per-request share: ``error_rate`` must be 1); ``pause`` -> PodChaos
  ``pod-failure``; ``refuse`` -> NetworkChaos ``partition`` of the pods' outgoing packets (clients
  time out rather than get refused). Every mode needs ``error_rate`` 1: pick replicas to hit a share.
- cpu_stress -> StressChaos ``cpu`` stressor (``workers``, ``load``) in the main container
  (``containerNames``).
- memory_growth -> StressChaos ``memory`` stressor holding ``cap_mb`` at once: Chaos Mesh cannot
  grow memory at a rate, so ``rate_mb_per_s`` is not expressed.
- slow_dependency -> NetworkChaos ``delay`` with direction ``to`` and ``externalTargets`` = the
  dependency's host from the Deployment annotation ``tmsops.io/dependencies``.
- disk_fill -> unsupported: Chaos Mesh has no disk fill fault.
"""

from __future__ import annotations

import json
import logging
import math
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import TypeAdapter, ValidationError

from tmsops.targets.base import UnsupportedFault
from tmsops.targets.model import (
    BandwidthLimit,
    ConnectionReset,
    CpuStress,
    DiskFill,
    Fault,
    FaultRequest,
    FaultSpec,
    FaultState,
    MemoryGrowth,
    NetworkLatency,
    ServiceUnavailable,
    SlowDependency,
)

log = logging.getLogger(__name__)

GROUP = "chaos-mesh.org"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
PLURALS = {
    "NetworkChaos": "networkchaos",
    "PodChaos": "podchaos",
    "StressChaos": "stresschaos",
    "HTTPChaos": "httpchaos",
}

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "tmsops"
LABEL_FAULT_ID = "tmsops.io/fault-id"
LABEL_SERVICE = "tmsops.io/service"
LABEL_FAULT_TYPE = "tmsops.io/fault-type"
ANNOTATION_FAULT = "tmsops.io/fault"
ANNOTATION_REPLICAS = "tmsops.io/replicas"
ANNOTATION_INJECTED_AT = "tmsops.io/injected-at"
ANNOTATION_EXPIRES_AT = "tmsops.io/expires-at"
DEPENDENCIES_ANNOTATION = "tmsops.io/dependencies"

# Token bucket sizes for the bandwidth action: a 20 MiB queue, a burst of at least 10 kB.
_BANDWIDTH_LIMIT = 20 * 2**20
_MIN_BUFFER = 10_000
_MAX_UINT32 = 2**32 - 1
# A fault id is a label value and part of a resource name.
FAULT_ID = re.compile(r"[a-z0-9]{1,40}")
_SPEC_ADAPTER: TypeAdapter[FaultSpec] = TypeAdapter(FaultSpec)

Spec = dict[str, Any]


@dataclass(frozen=True)
class ChaosTarget:
    """What a chaos resource needs to know of the service's Deployment."""

    service: str
    namespace: str
    match_labels: dict[str, str]
    container: str
    port: int | None = None
    dependencies: str | None = None


def new_fault_id() -> str:
    return uuid.uuid4().hex[:10]


def resource_name(fault_id: str) -> str:
    return f"tmsops-{fault_id}"


def managed_selector(service: str | None = None, fault_id: str | None = None) -> str:
    """The label selector of tmsops' chaos resources, optionally of one service or one fault."""
    terms = [f"{MANAGED_BY}={MANAGER}"]
    if service is not None:
        terms.append(f"{LABEL_SERVICE}={service}")
    if fault_id is not None:
        terms.append(f"{LABEL_FAULT_ID}={fault_id}")
    return ",".join(terms)


def chaos_object(fault_id: str, request: FaultRequest, target: ChaosTarget, namespace: str, now: datetime) -> Spec:
    """The Chaos Mesh resource injecting ``request`` into ``target``; UnsupportedFault if inexpressible."""
    kind, spec = chaos_spec(request.fault, target)
    spec.update(mode="all", selector=_selector(target, request.replicas), duration=go_duration(request.ttl_s))
    if kind == "StressChaos":
        spec["containerNames"] = [target.container]
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {
            "name": resource_name(fault_id),
            "namespace": namespace,
            "labels": _labels(fault_id, target.service, request.fault.type),
            "annotations": _annotations(request, now),
        },
        "spec": spec,
    }


def chaos_spec(fault: FaultSpec, target: ChaosTarget) -> tuple[str, Spec]:
    """The kind and action-specific part of the spec for one fault."""
    match fault:
        case NetworkLatency():
            return "NetworkChaos", {"action": "delay", "delay": _delay(fault.latency_ms, fault.jitter_ms)}
        case BandwidthLimit():
            return "NetworkChaos", {"action": "bandwidth", "bandwidth": _bandwidth(fault.rate_kbps)}
        case ConnectionReset():
            return "NetworkChaos", {"action": "loss", "loss": {"loss": _number(fault.probability * 100)}}
        case ServiceUnavailable():
            return _unavailable(fault, target)
        case CpuStress():
            load = max(1, round(fault.load_percent))
            return "StressChaos", {"stressors": {"cpu": {"workers": fault.workers, "load": load}}}
        case MemoryGrowth():
            size = f"{math.ceil(fault.cap_mb)}MB"
            return "StressChaos", {"stressors": {"memory": {"workers": 1, "size": size}}}
        case SlowDependency():
            return "NetworkChaos", _slow_dependency(fault, target)
        case DiskFill():
            raise UnsupportedFault(
                "disk_fill is not supported on Kubernetes: Chaos Mesh has no disk fill fault "
                "(StressChaos stresses CPU and memory only; IOChaos injects latency and errors)",
                details={"fault": fault.type.value},
            )
    raise UnsupportedFault(f"unknown fault type {fault!r}")  # pragma: no cover - the union is exhaustive


def go_duration(seconds: float) -> str:
    """Seconds as a Go duration: ``30`` -> ``"30s"``, ``1.5`` -> ``"1500ms"``."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{math.ceil(seconds * 1000)}ms"


def fault_from_object(item: Spec, now: datetime) -> Fault | None:
    """The Fault a tmsops chaos resource describes; None if it is not one of ours or is malformed."""
    metadata = item.get("metadata") or {}
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    if labels.get(MANAGED_BY) != MANAGER or LABEL_FAULT_ID not in labels:
        return None
    try:
        expires_at = datetime.fromisoformat(annotations[ANNOTATION_EXPIRES_AT])
        return Fault(
            id=labels[LABEL_FAULT_ID],
            service=labels[LABEL_SERVICE],
            fault=_SPEC_ADAPTER.validate_json(annotations[ANNOTATION_FAULT]),
            replicas=json.loads(annotations.get(ANNOTATION_REPLICAS, "[]")),
            injected_at=datetime.fromisoformat(annotations[ANNOTATION_INJECTED_AT]),
            expires_at=expires_at,
            state=FaultState.ACTIVE if expires_at > now else FaultState.EXPIRED,
        )
    except (KeyError, ValueError, TypeError, ValidationError) as error:
        log.warning("skipping chaos resource %s: cannot read its tmsops annotations: %s", metadata.get("name"), error)
        return None


def _labels(fault_id: str, service: str, fault_type: str) -> dict[str, str]:
    return {MANAGED_BY: MANAGER, LABEL_FAULT_ID: fault_id, LABEL_SERVICE: service, LABEL_FAULT_TYPE: fault_type}


def _annotations(request: FaultRequest, now: datetime) -> dict[str, str]:
    return {
        ANNOTATION_FAULT: _SPEC_ADAPTER.dump_json(request.fault, by_alias=True).decode(),
        ANNOTATION_REPLICAS: json.dumps(request.replicas),
        ANNOTATION_INJECTED_AT: now.isoformat(),
        ANNOTATION_EXPIRES_AT: (now + timedelta(seconds=request.ttl_s)).isoformat(),
    }


def _selector(target: ChaosTarget, replicas: list[str]) -> Spec:
    """Chaos Mesh ignores the other selectors when ``pods`` is given."""
    if replicas:
        return {"pods": {target.namespace: list(replicas)}}
    return {"namespaces": [target.namespace], "labelSelectors": dict(target.match_labels)}


def _number(value: float) -> str:
    """A decimal without exponent: ``12.50`` -> ``"12.5"``, ``100.0`` -> ``"100"``."""
    return format(Decimal(str(value)).normalize(), "f")


def _delay(latency_ms: float, jitter_ms: float) -> Spec:
    return {"latency": f"{_number(latency_ms)}ms", "jitter": f"{_number(jitter_ms)}ms", "correlation": "0"}


def _bandwidth(rate_kbps: float) -> Spec:
    rate_bytes = round(rate_kbps * 1000)
    rate = f"{int(rate_kbps)}kbps" if rate_kbps == int(rate_kbps) else f"{rate_bytes}bps"
    buffer = min(_MAX_UINT32, max(_MIN_BUFFER, rate_bytes // 100))
    return {"rate": rate, "limit": max(_BANDWIDTH_LIMIT, buffer), "buffer": buffer}


def _unavailable(fault: ServiceUnavailable, target: ChaosTarget) -> tuple[str, Spec]:
    if fault.error_rate < 1:
        raise UnsupportedFault(
            f"service_unavailable with error_rate {fault.error_rate} is not supported on Kubernetes: Chaos Mesh "
            "fails every request of the chosen pods (HTTPChaos has no percentage); use error_rate 1 and pick "
            "replicas to hit a share of the traffic",
            details={"fault": fault.type.value, "errorRate": fault.error_rate},
        )
    if fault.mode == "pause":
        return "PodChaos", {"action": "pod-failure"}
    if fault.mode == "refuse":
        return "NetworkChaos", {"action": "partition", "direction": "to"}
    if target.port is None:
        raise UnsupportedFault(
            f"service {target.service!r}: container {target.container!r} declares no containerPort, "
            "which HTTPChaos needs to intercept its HTTP traffic",
            details={"service": target.service, "container": target.container},
        )
    return "HTTPChaos", {"target": "Response", "port": target.port, "replace": {"code": fault.status}}


def _slow_dependency(fault: SlowDependency, target: ChaosTarget) -> Spec:
    host = _dependency_host(target, fault.dependency)
    return {
        "action": "delay",
        "delay": _delay(fault.latency_ms, fault.jitter_ms),
        "direction": "to",
        "externalTargets": [host],
    }


def _dependency_host(target: ChaosTarget, dependency: str) -> str:
    """The host of ``dependency`` from the ``tmsops.io/dependencies`` annotation (JSON {name: "host:port"})."""
    try:
        declared = json.loads(target.dependencies or "{}")
    except ValueError as error:
        raise UnsupportedFault(
            f"service {target.service!r}: annotation {DEPENDENCIES_ANNOTATION} is not JSON: {error}",
            details={"service": target.service},
        ) from error
    address = declared.get(dependency) if isinstance(declared, dict) else None
    if not isinstance(address, str) or not address:
        known = ", ".join(sorted(declared)) if isinstance(declared, dict) and declared else "none"
        raise UnsupportedFault(
            f"service {target.service!r} declares no dependency {dependency!r} in annotation "
            f"{DEPENDENCIES_ANNOTATION} (declared: {known})",
            details={"service": target.service, "dependency": dependency},
        )
    host, _, port = address.rpartition(":")
    return host if host and port.isdigit() else address
