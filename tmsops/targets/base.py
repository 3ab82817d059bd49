"""The interface every target backend implements, and the errors it raises.

Every method is a coroutine. Mutations take ``dry_run``: the backend checks the request
as far as it can without changing anything (the Kubernetes API server's server-side dry
run; the fleet's own checks) and returns what the result would be.

A fault is injected with a time-to-live that the target side enforces by itself (the
fleet's proxy and reaper, Chaos Mesh's ``duration``), so a fault ends even if the caller
never comes back to revert it. ``revert`` is idempotent: reverting a fault that is gone
or expired succeeds.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from tmsops.errors import PermanentError, TemporaryError
from tmsops.targets.model import Fault, FaultRequest, Resources, ServiceStatus, ServiceUsage


@runtime_checkable
class Target(Protocol):
    kind: str

    async def list_services(self) -> list[ServiceStatus]: ...

    async def service(self, name: str) -> ServiceStatus: ...

    async def set_replicas(self, name: str, replicas: int, *, dry_run: bool = False) -> ServiceStatus: ...

    async def set_resources(self, name: str, resources: Resources, *, dry_run: bool = False) -> ServiceStatus: ...

    async def usage(self, name: str) -> ServiceUsage: ...

    async def inject(self, request: FaultRequest) -> Fault: ...

    async def faults(self, service: str | None = None) -> list[Fault]: ...

    async def revert(self, fault_id: str) -> Fault | None: ...

    async def aclose(self) -> None: ...


class TargetError(PermanentError):
    """A request the target refuses; retrying the same request will not help."""

    http_status = 422


class UnknownService(TargetError):
    http_status = 404

    def __init__(self, name: str, known: list[str] | None = None) -> None:
        hint = f"; known services: {', '.join(sorted(known))}" if known else ""
        super().__init__(f"unknown service {name!r}{hint}", details={"service": name})


class ReplicasOutOfRange(TargetError):
    def __init__(self, name: str, replicas: int, low: int, high: int) -> None:
        super().__init__(
            f"service {name!r}: {replicas} replicas is outside minReplicas {low} .. maxReplicas {high}",
            details={"service": name, "replicas": replicas, "minReplicas": low, "maxReplicas": high},
        )


class UnsupportedFault(TargetError):
    """The backend cannot inject this kind of fault (or not with these parameters)."""


class UnknownFault(TargetError):
    http_status = 404

    def __init__(self, fault_id: str) -> None:
        super().__init__(f"unknown fault {fault_id!r}", details={"fault": fault_id})


class Forbidden(TargetError):
    """The target's credentials lack a permission (Kubernetes 403); fix the role, then retry."""

    http_status = 502


class TargetUnavailable(TemporaryError):
    """The target cannot be reached or is busy (connection refused, timeout, 5xx, conflicts exhausted)."""


class StartFailed(TargetError):
    """A replica's command exited or never became ready; the message holds its last log lines."""

    http_status = 502


class PortInUse(TemporaryError):
    """A port the fleet needs is taken by another process; retry once it is free."""
