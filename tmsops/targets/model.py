"""What a target reports and accepts: services, replicas, resources, usage and faults.

These types cross HTTP (the fleet's control API) and the Kubernetes backend alike, so
they are pydantic models with camelCase aliases for JSON and snake_case in code.
CPU is in cores (0.25 = a quarter of a core), memory in bytes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal, cast

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from tmsops.settings import Bytes, Cores, WholeNumber

Probability = Annotated[float, Field(ge=0, le=1)]
NonNegativeMs = Annotated[float, Field(ge=0, le=600_000)]


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


def type_required(schema: JsonDict) -> None:
    """Mark ``type``, the tag of a discriminated union, required in a member's JSON schema: it has a
    default in Python, but a request must give it for the union to tell its members apart."""
    required = [name for name in cast(list[str], schema.get("required", [])) if name != "type"]
    schema["required"] = ["type", *required]


class FaultSpecModel(Model):
    """A member of :data:`FaultSpec`; strict, as a request body's part: a number is a JSON number."""

    model_config = ConfigDict(json_schema_extra=type_required, strict=True)


class Resources(Model):
    """Requests and limits of one replica; ``None`` means not set."""

    cpu_request: Cores | None = Field(None, description="cores; also a quantity such as 250m")
    cpu_limit: Cores | None = Field(None, description="cores; also a quantity such as 250m")
    memory_request: Bytes | None = Field(None, description="bytes; also a quantity such as 256Mi")
    memory_limit: Bytes | None = Field(None, description="bytes; also a quantity such as 256Mi")


class Replica(Model):
    """One running copy of a service: a process on the fleet, a pod on Kubernetes."""

    id: str
    ready: bool
    started_at: datetime | None = None
    restarts: int = 0
    address: str | None = None


class ServiceStatus(Model):
    name: str
    replicas: int = Field(description="desired replicas")
    ready_replicas: int
    min_replicas: int
    max_replicas: int
    resources: Resources = Resources()
    pods: list[Replica] = []


class ReplicaUsage(Model):
    replica: str
    cpu_cores: float
    memory_bytes: int


class ServiceUsage(Model):
    """Usage per replica; ``requests_total`` counts the requests the service answered since the target
    started (the fleet's proxy counts them; ``None`` where the target cannot, as on Kubernetes)."""

    service: str
    at: datetime
    replicas: list[ReplicaUsage]
    resources: Resources = Resources()
    requests_total: int | None = None

    @property
    def cpu_cores(self) -> float:
        return sum(replica.cpu_cores for replica in self.replicas)

    @property
    def memory_bytes(self) -> int:
        return sum(replica.memory_bytes for replica in self.replicas)


class FaultType(StrEnum):
    NETWORK_LATENCY = "network_latency"
    BANDWIDTH_LIMIT = "bandwidth_limit"
    CONNECTION_RESET = "connection_reset"
    SERVICE_UNAVAILABLE = "service_unavailable"
    CPU_STRESS = "cpu_stress"
    MEMORY_GROWTH = "memory_growth"
    DISK_FILL = "disk_fill"
    SLOW_DEPENDENCY = "slow_dependency"


class NetworkLatency(FaultSpecModel):
    """Every request to the service waits ``latency_ms`` plus or minus ``jitter_ms`` (uniform)."""

    type: Literal[FaultType.NETWORK_LATENCY] = FaultType.NETWORK_LATENCY
    latency_ms: NonNegativeMs
    jitter_ms: NonNegativeMs = 0


class BandwidthLimit(FaultSpecModel):
    """Responses from the service flow at most at ``rate_kbps`` kilobytes per second."""

    type: Literal[FaultType.BANDWIDTH_LIMIT] = FaultType.BANDWIDTH_LIMIT
    rate_kbps: float = Field(gt=0, le=10_000_000)


class ConnectionReset(FaultSpecModel):
    """A share ``probability`` of connections to the service is reset (TCP RST) before any answer."""

    type: Literal[FaultType.CONNECTION_RESET] = FaultType.CONNECTION_RESET
    probability: Probability = 1.0


class ServiceUnavailable(FaultSpecModel):
    """A share ``error_rate`` of requests fails: ``error`` answers ``status``, ``refuse`` resets the
    connection, ``pause`` stops the chosen replicas (SIGSTOP on the fleet, pod failure on Kubernetes)."""

    type: Literal[FaultType.SERVICE_UNAVAILABLE] = FaultType.SERVICE_UNAVAILABLE
    mode: Literal["error", "refuse", "pause"] = "error"
    error_rate: Probability = 1.0
    status: WholeNumber = Field(503, ge=500, le=599)


class CpuStress(FaultSpecModel):
    """``workers`` busy workers per chosen replica, each at ``load_percent`` of one core."""

    type: Literal[FaultType.CPU_STRESS] = FaultType.CPU_STRESS
    workers: WholeNumber = Field(1, ge=1, le=64)
    load_percent: float = Field(100, gt=0, le=100)


class MemoryGrowth(FaultSpecModel):
    """Memory held beside each chosen replica grows by ``rate_mb_per_s`` up to ``cap_mb``."""

    type: Literal[FaultType.MEMORY_GROWTH] = FaultType.MEMORY_GROWTH
    rate_mb_per_s: float = Field(gt=0, le=10_000)
    cap_mb: float = Field(gt=0, le=1_000_000)


class DiskFill(FaultSpecModel):
    """Fill the service's data volume until ``fill_percent`` of it is used, never leaving less than
    ``floor_mb`` free."""

    type: Literal[FaultType.DISK_FILL] = FaultType.DISK_FILL
    fill_percent: float = Field(gt=0, le=100)
    floor_mb: float = Field(1024, ge=0)


class SlowDependency(FaultSpecModel):
    """Traffic between the service and its dependency ``dependency`` (as declared for the service,
    e.g. ``postgres``) waits ``latency_ms`` plus or minus ``jitter_ms``."""

    type: Literal[FaultType.SLOW_DEPENDENCY] = FaultType.SLOW_DEPENDENCY
    dependency: str = Field(min_length=1, max_length=100)
    latency_ms: NonNegativeMs
    jitter_ms: NonNegativeMs = 0


FaultSpec = Annotated[
    NetworkLatency
    | BandwidthLimit
    | ConnectionReset
    | ServiceUnavailable
    | CpuStress
    | MemoryGrowth
    | DiskFill
    | SlowDependency,
    Field(discriminator="type"),
]

MAX_FAULT_TTL = timedelta(hours=24)


class FaultRequest(Model):
    """Inject ``fault`` into ``service`` for ``ttl_s`` seconds at most; ``replicas`` picks the replicas
    hit by per-replica faults (all when empty); ``dry_run`` checks everything and changes nothing."""

    model_config = ConfigDict(strict=True)

    service: str
    fault: FaultSpec
    ttl_s: float = Field(gt=0, le=MAX_FAULT_TTL.total_seconds())
    replicas: list[str] = []
    dry_run: bool = False


class FaultState(StrEnum):
    ACTIVE = "active"
    REVERTED = "reverted"
    EXPIRED = "expired"
    PLANNED = "planned"


class Fault(Model):
    """An injected fault: the handle a caller reverts by ``id``."""

    id: str
    service: str
    fault: FaultSpec
    replicas: list[str]
    injected_at: datetime
    expires_at: datetime
    state: FaultState
