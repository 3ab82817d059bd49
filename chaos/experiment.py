"""Experiments as validated data, and how each seed fault type maps onto the target's faults.

An experiment (JSON or YAML, camelCase keys) names a target selector, a ``faultType`` with its
``parameters``, a ``duration``, a steady-state hypothesis made of probes, the probe interval
and the failure threshold::

    name: gateway-latency
    target: {service: api-gateway, mode: percent, value: 25}
    faultType: network_latency
    parameters: {latencyMs: 200, jitterMs: 20}
    duration: 5m
    steadyState:
      probes:
        - {type: http, url: "http://127.0.0.1:8080/health", expectedStatus: 200, maxLatencyMs: 500}
    probeInterval: 5s
    failureThreshold: 3

Decisions:

- The six seed fault types map onto the target's fault specs: ``network_latency`` ->
  NetworkLatency, ``service_unavailable`` -> ServiceUnavailable, ``cpu_stress`` -> CpuStress,
  ``memory_leak`` -> MemoryGrowth, ``disk_full`` -> DiskFill, ``database_slow`` -> SlowDependency
  (the dependency named ``postgres`` unless ``dependency`` says otherwise).
- Selector modes, as in Chaos Mesh: ``one`` (one running replica, at random), ``all``,
  ``fixed`` (``value`` replicas) and ``percent`` (``value`` percent of the running replicas,
  rounded down, at least 1). A ``fixed`` count above the running replicas is refused.
- ``disk_full`` and ``database_slow`` reach the whole service whatever the selector says (the
  data directory and the dependency proxy are the service's, not a replica's): they resolve to
  every running replica, and the blast radius counts them all.
- ``disk_full`` never leaves less than ``floorMb`` free on the volume, and ``floorMb`` is at least
  :data:`MIN_FLOOR_MB`: the host always keeps a safety floor of free space.
- Probe names are unique within an experiment; a probe without a name is called ``<type>-<n>``.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal, Self, TypeVar, cast

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from chaos.errors import InvalidExperiment, UnsupportedMediaType
from tmsops.settings import SERVICE_NAME, Duration, WholeNumber
from tmsops.targets.model import (
    CpuStress,
    DiskFill,
    FaultRequest,
    FaultSpec,
    FaultType,
    MemoryGrowth,
    NetworkLatency,
    ServiceStatus,
    ServiceUnavailable,
    SlowDependency,
    type_required,
)

MIN_FLOOR_MB = 256
LatencyMs = Annotated[float, Field(ge=0, le=600_000, description="milliseconds")]
Weight = Annotated[float, Field(gt=0, le=100, description="weight in the resilience score")]
FaultTypeName = Literal[
    "network_latency", "service_unavailable", "cpu_stress", "memory_leak", "disk_full", "database_slow"
]
SelectorMode = Literal["one", "all", "fixed", "percent"]
MetricName = Literal["requestsPerSecond", "cpuCores", "memoryBytes", "p95LatencyMs", "errorRate", "readyReplicas"]
ModelT = TypeVar("ModelT", bound=BaseModel)


class Model(BaseModel):
    """A part of a request body: strict, so a number is a JSON number and a flag a JSON boolean
    (lax, pydantic would take ``true`` as 1 and ``"3"`` as 3)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", ser_json_timedelta="float", strict=True
    )


# Fault parameters, one model per seed fault type. ``kind`` is filled in from ``faultType``.


class NetworkLatencyParameters(Model):
    """Every request to the chosen replicas waits ``latencyMs`` plus or minus ``jitterMs`` (uniform)."""

    kind: Literal["network_latency"] = Field("network_latency", exclude=True)
    latency_ms: LatencyMs
    jitter_ms: LatencyMs = 0

    def to_spec(self) -> FaultSpec:
        return NetworkLatency(latency_ms=self.latency_ms, jitter_ms=self.jitter_ms)


class ServiceUnavailableParameters(Model):
    """A share ``errorRate`` of requests fails: ``error`` answers ``status``, ``refuse`` resets the
    connection, ``pause`` stops the chosen replicas."""

    kind: Literal["service_unavailable"] = Field("service_unavailable", exclude=True)
    mode: Literal["error", "refuse", "pause"] = "error"
    error_rate: float = Field(1.0, ge=0, le=1)
    status: WholeNumber = Field(503, ge=500, le=599)

    def to_spec(self) -> FaultSpec:
        return ServiceUnavailable(mode=self.mode, error_rate=self.error_rate, status=self.status)


class CpuStressParameters(Model):
    """``workers`` busy workers per chosen replica, each at ``loadPercent`` of one core."""

    kind: Literal["cpu_stress"] = Field("cpu_stress", exclude=True)
    workers: WholeNumber = Field(1, ge=1, le=64)
    load_percent: float = Field(100, gt=0, le=100)

    def to_spec(self) -> FaultSpec:
        return CpuStress(workers=self.workers, load_percent=self.load_percent)


class MemoryLeakParameters(Model):
    """Memory held beside each chosen replica grows by ``rateMbPerS`` up to ``capMb``."""

    kind: Literal["memory_leak"] = Field("memory_leak", exclude=True)
    rate_mb_per_s: float = Field(10, gt=0, le=10_000)
    cap_mb: float = Field(256, gt=0, le=1_000_000)

    def to_spec(self) -> FaultSpec:
        return MemoryGrowth(rate_mb_per_s=self.rate_mb_per_s, cap_mb=self.cap_mb)


class DiskFullParameters(Model):
    """Fill the service's data volume to ``fillPercent`` used, never leaving less than ``floorMb`` free."""

    kind: Literal["disk_full"] = Field("disk_full", exclude=True)
    fill_percent: float = Field(95, gt=0, le=100)
    floor_mb: float = Field(1024, ge=MIN_FLOOR_MB, description=f"free space kept, at least {MIN_FLOOR_MB} MB")

    def to_spec(self) -> FaultSpec:
        return DiskFill(fill_percent=self.fill_percent, floor_mb=self.floor_mb)


class DatabaseSlowParameters(Model):
    """Traffic from the service to its database ``dependency`` waits ``latencyMs`` plus or minus ``jitterMs``."""

    kind: Literal["database_slow"] = Field("database_slow", exclude=True)
    dependency: str = Field("postgres", min_length=1, max_length=100)
    latency_ms: LatencyMs
    jitter_ms: LatencyMs = 0

    def to_spec(self) -> FaultSpec:
        return SlowDependency(dependency=self.dependency, latency_ms=self.latency_ms, jitter_ms=self.jitter_ms)


FaultParameters = Annotated[
    NetworkLatencyParameters
    | ServiceUnavailableParameters
    | CpuStressParameters
    | MemoryLeakParameters
    | DiskFullParameters
    | DatabaseSlowParameters,
    Field(discriminator="kind"),
]


@dataclass(frozen=True)
class FaultKind:
    """A seed fault type: its parameters, the target fault it becomes, and whether it reaches the whole service."""

    name: FaultTypeName
    parameters: type[Model]
    target_type: FaultType
    service_wide: bool

    @property
    def summary(self) -> str:
        return (self.parameters.__doc__ or "").split("\n\n")[0].replace("\n    ", " ").strip()


FAULT_KINDS: dict[str, FaultKind] = {
    kind.name: kind
    for kind in (
        FaultKind("network_latency", NetworkLatencyParameters, FaultType.NETWORK_LATENCY, False),
        FaultKind("service_unavailable", ServiceUnavailableParameters, FaultType.SERVICE_UNAVAILABLE, False),
        FaultKind("cpu_stress", CpuStressParameters, FaultType.CPU_STRESS, False),
        FaultKind("memory_leak", MemoryLeakParameters, FaultType.MEMORY_GROWTH, False),
        FaultKind("disk_full", DiskFullParameters, FaultType.DISK_FILL, True),
        FaultKind("database_slow", DatabaseSlowParameters, FaultType.SLOW_DEPENDENCY, True),
    )
}


class TargetSelector(Model):
    """Which replicas of ``service`` the fault reaches: ``one``, ``all``, ``fixed`` (``value`` replicas)
    or ``percent`` (``value`` percent of the running replicas, at least 1)."""

    service: str = Field(pattern=SERVICE_NAME)
    mode: SelectorMode = "one"
    value: float | None = None

    @model_validator(mode="after")
    def _value_fits_mode(self) -> Self:
        if self.mode in ("one", "all") and self.value is not None:
            raise ValueError(f"value: not used with mode {self.mode}; leave it out")
        if self.mode == "fixed" and (self.value is None or self.value < 1 or self.value != int(self.value)):
            raise ValueError("value: mode fixed needs a whole number of replicas, at least 1")
        if self.mode == "percent" and (self.value is None or not 0 < self.value <= 100):
            raise ValueError("value: mode percent needs a percentage above 0 and at most 100")
        return self


# Probes of the steady-state hypothesis.


class ProbeModel(Model):
    """A member of :data:`Probe`: ``type`` tells which."""

    model_config = ConfigDict(json_schema_extra=type_required)


class HttpProbe(ProbeModel):
    """Passes when ``url`` answers ``expectedStatus`` within ``maxLatencyMs`` (when given)."""

    type: Literal["http"] = "http"
    name: str = Field("", max_length=100)
    url: str = Field(pattern=r"^https?://", max_length=2000)
    method: Literal["GET", "HEAD"] = "GET"
    expected_status: WholeNumber = Field(200, ge=100, le=599)
    max_latency_ms: float | None = Field(None, gt=0, le=600_000)
    timeout: Duration = Field(timedelta(seconds=5), description="e.g. 2s")
    weight: Weight = 1

    @field_validator("timeout")
    @classmethod
    def _timeout_in_range(cls, value: timedelta) -> timedelta:
        return _in_range("timeout", value, timedelta(milliseconds=10), timedelta(minutes=1))


class PrometheusProbe(ProbeModel):
    """Passes when every sample of the instant ``query`` is within ``tolerance`` of ``expected`` (absolute)."""

    type: Literal["prometheus"] = "prometheus"
    name: str = Field("", max_length=100)
    query: str = Field(min_length=1, max_length=5000)
    expected: float
    tolerance: float = Field(0, ge=0)
    weight: Weight = 1


class AnomalyProbe(ProbeModel):
    """Sends ``metric`` of ``service`` over the last ``window`` (from Prometheus, every ``step``) to the
    model server's ``/detect``; fails when one of the last ``lastPoints`` points is flagged."""

    type: Literal["anomaly"] = "anomaly"
    name: str = Field("", max_length=100)
    service: str = Field(pattern=SERVICE_NAME)
    metric: MetricName = "requestsPerSecond"
    window: Duration = timedelta(minutes=10)
    step: Duration = timedelta(seconds=15)
    last_points: WholeNumber = Field(3, ge=1, le=100)
    min_points: WholeNumber = Field(12, ge=1, le=10_000)
    weight: Weight = 1

    @model_validator(mode="after")
    def _enough_steps(self) -> Self:
        if self.step <= timedelta(0) or self.window < self.step * self.min_points:
            raise ValueError(f"window must hold at least minPoints ({self.min_points}) steps of {self.step}")
        return self


Probe = Annotated[HttpProbe | PrometheusProbe | AnomalyProbe, Field(discriminator="type")]


class SteadyState(Model):
    """The hypothesis: every probe passes. No probes: nothing to check (the experiment cannot deviate)."""

    title: str = Field("", max_length=200)
    probes: list[Probe] = Field([], max_length=20)

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        seen: set[str] = set()
        for index, probe in enumerate(self.probes, start=1):
            probe.name = probe.name or f"{probe.type}-{index}"
            if probe.name in seen:
                raise ValueError(f"probes: two probes are named {probe.name!r}; names must be unique")
            seen.add(probe.name)
        return self


def parameters_schema(kind: FaultKind) -> dict[str, Any]:
    """The JSON schema of the parameters of ``kind`` as a body gives them (``kind`` comes from ``faultType``)."""
    schema = kind.parameters.model_json_schema(by_alias=True, mode="validation")
    schema["properties"].pop("kind", None)
    return schema


def _parameters_follow_fault_type(schema: JsonDict) -> None:
    """In the JSON schema, ``parameters`` are those of ``faultType`` (and may be left out when none
    is required), as :meth:`FaultChoice._tag_parameters` reads them."""
    schema["required"] = [name for name in cast(list[str], schema.get("required", [])) if name != "parameters"]
    cases: list[JsonValue] = []
    for name, kind in FAULT_KINDS.items():
        parameters = parameters_schema(kind)
        then: dict[str, JsonValue] = {"properties": {"parameters": parameters}}
        if parameters.get("required"):
            then["required"] = ["parameters"]
        cases.append({"if": {"properties": {"faultType": {"const": name}}, "required": ["faultType"]}, "then": then})
    schema["allOf"] = cases


class FaultChoice(Model):
    """A target selector, a seed fault type and its parameters: what an experiment and an ad hoc fault share."""

    model_config = ConfigDict(json_schema_extra=_parameters_follow_fault_type)

    target: TargetSelector
    fault_type: FaultTypeName
    parameters: Annotated[
        FaultParameters, WithJsonSchema({"type": "object", "description": "the parameters of faultType"})
    ]

    @model_validator(mode="before")
    @classmethod
    def _tag_parameters(cls, data: Any) -> Any:
        """Tell the parameters which model they are, from ``faultType``."""
        if not isinstance(data, dict):
            return data
        fault_type = data.get("faultType", data.get("fault_type"))
        parameters = data.get("parameters", {})
        if isinstance(fault_type, str) and fault_type in FAULT_KINDS and isinstance(parameters, dict):
            return {**data, "parameters": {**parameters, "kind": fault_type}}
        return data

    @property
    def kind(self) -> FaultKind:
        return FAULT_KINDS[self.fault_type]

    def spec(self) -> FaultSpec:
        return self.parameters.to_spec()


class Experiment(FaultChoice):
    """One chaos experiment: inject the fault for ``duration`` while the steady state is probed."""

    name: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=2000)
    duration: Duration = Field(description="e.g. 30s, 5m; at most safety.maxExperimentDuration")
    steady_state: SteadyState = SteadyState()
    probe_interval: Duration = timedelta(seconds=5)
    failure_threshold: WholeNumber = Field(3, ge=1, le=100, description="consecutive failed probe rounds that abort")
    weight: Weight = Field(1, description="weight of this experiment in its service's resilience score")

    @field_validator("duration")
    @classmethod
    def _duration_positive(cls, value: timedelta) -> timedelta:
        return _in_range("duration", value, timedelta(milliseconds=100), timedelta(hours=24))

    @field_validator("probe_interval")
    @classmethod
    def _interval_in_range(cls, value: timedelta) -> timedelta:
        return _in_range("probeInterval", value, timedelta(milliseconds=50), timedelta(hours=1))


class AdHocInjection(FaultChoice):
    """Inject one fault now, for ``duration`` at most, under the same safety rules as an experiment."""

    name: str = Field("", max_length=200)
    duration: Duration = Field(description="the time limit, e.g. 60s; at most safety.maxExperimentDuration")
    dry_run: bool = False

    @field_validator("duration")
    @classmethod
    def _duration_positive(cls, value: timedelta) -> timedelta:
        return _in_range("duration", value, timedelta(milliseconds=100), timedelta(hours=24))

    def as_experiment(self) -> Experiment:
        """The ad hoc fault as an experiment without probes, so it runs, stops and recovers the same way."""
        name = self.name or f"ad hoc {self.fault_type} on {self.target.service}"
        return Experiment.model_validate(
            {**self.model_dump(by_alias=True, exclude={"dry_run", "name"}), "name": name, "failureThreshold": 1}
        )


def _in_range(name: str, value: timedelta, low: timedelta, high: timedelta) -> timedelta:
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low.total_seconds():g} s and {high.total_seconds():g} s")
    return value


# Reading bodies.


def read_document(raw: bytes, content_type: str | None) -> Any:
    """The body as data: YAML when the content type says so, otherwise JSON."""
    kind = (content_type or "application/json").split(";")[0].strip().lower()
    if not raw.strip():
        raise InvalidExperiment("body: an experiment is required", details={"errors": [_problem("body", "required")]})
    if "yaml" in kind:
        return _load(yaml.safe_load, raw, "YAML", (yaml.YAMLError, UnicodeDecodeError))
    if "json" in kind or kind in ("text/plain", "*/*"):
        return _load(json.loads, raw, "JSON", (ValueError,))
    raise UnsupportedMediaType(f"content type {kind!r}: send application/json or application/yaml")


def _load(loader: Any, raw: bytes, name: str, errors: tuple[type[Exception], ...]) -> Any:
    try:
        return loader(raw)
    except errors as error:
        message = f"body: not valid {name}: {error}"
        raise InvalidExperiment(message, details={"errors": [_problem("body", f"not valid {name}")]}) from error


def parse_experiment(data: Any) -> Experiment:
    """A validated experiment, or InvalidExperiment naming every bad field."""
    return _validated(Experiment, data)


def parse_injection(data: Any) -> AdHocInjection:
    return _validated(AdHocInjection, data)


def _validated(model: type[ModelT], data: Any) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = field_problems(error)
        message = "; ".join(f"{item['field']}: {item['message']}" for item in problems)
        raise InvalidExperiment(message, details={"errors": problems}) from error


def field_problems(error: ValidationError) -> list[dict[str, str]]:
    """Each error as ``{"field": "parameters.latencyMs", "message": ...}``, union tags left out."""
    items = error.errors()
    bad_type = any(tuple(item["loc"]) == ("faultType",) for item in items)
    problems = []
    for item in items:
        parts = _without_tags(tuple(item["loc"]))
        if bad_type and parts[:1] == ("parameters",):
            continue
        problems.append(_problem(".".join(str(part) for part in parts) or "body", _message(item)))
    return problems


def _without_tags(location: tuple[int | str, ...]) -> tuple[int | str, ...]:
    tags = set(FAULT_KINDS) | {"http", "prometheus", "anomaly"}
    kept: list[int | str] = []
    for part in location:
        previous = kept[-1] if kept else None
        if part in tags and (previous == "parameters" or isinstance(previous, int)):
            continue
        kept.append(part)
    return tuple(kept)


def _message(item: Any) -> str:
    return str(item["msg"]).removeprefix("Value error, ")


def _problem(field: str, message: str) -> dict[str, str]:
    return {"field": field, "message": message}


# Resolving the selector on the target.


@dataclass(frozen=True)
class Resolution:
    """The replicas a fault reaches, out of the service's running replicas."""

    service: str
    running: list[str]
    reached: list[str]

    @property
    def percent(self) -> float:
        return 100.0 * len(self.reached) / len(self.running) if self.running else 0.0


def resolve(choice: FaultChoice, status: ServiceStatus, rng: random.Random | None = None) -> Resolution:
    """The replicas ``choice`` reaches on ``status``; a service-wide fault reaches them all."""
    running = sorted(pod.id for pod in status.pods)
    count = len(running) if choice.kind.service_wide else selected_count(choice.target, len(running))
    reached = sorted((rng or random.Random()).sample(running, count)) if count < len(running) else running
    return Resolution(service=status.name, running=running, reached=reached)


def selected_count(selector: TargetSelector, running: int) -> int:
    """How many of ``running`` replicas the selector picks (may exceed ``running`` for ``fixed``)."""
    if selector.mode == "all":
        return running
    if selector.mode == "one":
        return min(1, running)
    assert selector.value is not None
    if selector.mode == "fixed":
        return int(selector.value)
    return max(1, math.floor(running * selector.value / 100)) if running else 0


def fault_request(choice: FaultChoice, resolution: Resolution, ttl_s: float, *, dry_run: bool = False) -> FaultRequest:
    """The target request: per-replica faults name their replicas; a disk fill runs beside one replica."""
    replicas = resolution.reached
    if choice.fault_type == "disk_full":
        replicas = replicas[:1]
    elif choice.fault_type == "database_slow":
        replicas = []
    return FaultRequest(
        service=resolution.service, fault=choice.spec(), ttl_s=ttl_s, replicas=replicas, dry_run=dry_run
    )


def fault_types_catalog() -> list[dict[str, Any]]:
    """Every seed fault type with its description, target fault, scope and parameter JSON schema."""
    catalog = []
    for kind in FAULT_KINDS.values():
        schema = parameters_schema(kind)
        catalog.append(
            {
                "name": kind.name,
                "description": kind.summary,
                "targetFault": kind.target_type.value,
                "scope": "service" if kind.service_wide else "replica",
                "parameters": schema,
            }
        )
    return catalog
