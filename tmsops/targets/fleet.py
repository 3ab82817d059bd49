"""The local fleet as a target: a client of the fleet's control API (``tmsops fleet run``).

Errors come back as the types the fleet raised (the JSON error's ``code`` names them), so
a caller handles an unknown service or an out-of-range count the same way on the fleet as
on Kubernetes. A fleet that cannot be reached is a :class:`TargetUnavailable`.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import TypeAdapter

from tmsops.errors import TemporaryError, TmsopsError
from tmsops.targets.base import (
    Forbidden,
    PortInUse,
    ReplicasOutOfRange,
    StartFailed,
    TargetError,
    TargetUnavailable,
    UnknownFault,
    UnknownService,
    UnsupportedFault,
)
from tmsops.targets.model import Fault, FaultRequest, Resources, ServiceStatus, ServiceUsage

_ERRORS: dict[str, type[TmsopsError]] = {
    "unknown_service": UnknownService,
    "unknown_fault": UnknownFault,
    "replicas_out_of_range": ReplicasOutOfRange,
    "unsupported_fault": UnsupportedFault,
    "start_failed": StartFailed,
    "port_in_use": PortInUse,
    "target_unavailable": TargetUnavailable,
}
_services = TypeAdapter(list[ServiceStatus])
_faults = TypeAdapter(list[Fault])


class FleetTarget:
    kind = "fleet"

    def __init__(self, url: str, token: str | None, *, timeout_s: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout_s)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def list_services(self) -> list[ServiceStatus]:
        return _services.validate_python(await self._call("GET", "/services"))

    async def service(self, name: str) -> ServiceStatus:
        return ServiceStatus.model_validate(await self._call("GET", f"/services/{name}"))

    async def set_replicas(self, name: str, replicas: int, *, dry_run: bool = False) -> ServiceStatus:
        body = {"replicas": replicas, "dryRun": dry_run}
        return ServiceStatus.model_validate(await self._call("PUT", f"/services/{name}/replicas", body))

    async def set_resources(self, name: str, resources: Resources, *, dry_run: bool = False) -> ServiceStatus:
        body = {**resources.model_dump(by_alias=True, exclude_none=True), "dryRun": dry_run}
        return ServiceStatus.model_validate(await self._call("PATCH", f"/services/{name}/resources", body))

    async def usage(self, name: str) -> ServiceUsage:
        return ServiceUsage.model_validate(await self._call("GET", f"/services/{name}/usage"))

    async def inject(self, request: FaultRequest) -> Fault:
        return Fault.model_validate(await self._call("POST", "/faults", request.model_dump(mode="json", by_alias=True)))

    async def faults(self, service: str | None = None) -> list[Fault]:
        params = {"service": service} if service else None
        return _faults.validate_python(await self._call("GET", "/faults", params=params))

    async def revert(self, fault_id: str) -> Fault | None:
        return Fault.model_validate(await self._call("DELETE", f"/faults/{fault_id}"))

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, str] | None = None
    ) -> Any:
        try:
            response = await self._client.request(method, path, json=body, params=params)
        except httpx.HTTPError as error:
            raise TargetUnavailable(f"the fleet at {self.url} cannot be reached: {error}", retry_after=2.0) from error
        if response.is_success:
            return response.json()
        raise _error(response)


def _error(response: httpx.Response) -> TmsopsError:
    """The error the fleet answered, as its own type when the code names one."""
    try:
        error = response.json()["error"]
        code, message, details = str(error["code"]), str(error["message"]), dict(error.get("details") or {})
    except (ValueError, KeyError, TypeError):
        code, message, details = "", f"the fleet answered {response.status_code}: {response.text[:200]}", {}
    if response.status_code in (401, 403):
        return Forbidden(f"the fleet refused the token: {message}", details=details)
    kind = _ERRORS.get(code)
    if kind is None:
        kind = TargetUnavailable if response.status_code >= 500 else TargetError
    # The fleet's error types build their message from their arguments; rebuild from the message sent.
    rebuilt = kind.__new__(kind)
    TmsopsError.__init__(rebuilt, message, details=details)
    if isinstance(rebuilt, TemporaryError):
        rebuilt.retry_after = float(response.headers.get("Retry-After", "1"))
    return rebuilt
