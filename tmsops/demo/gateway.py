"""api-gateway: the public API of the demo workload, in front of shipment-service and tracking-service.

Routes: ``GET /api/shipments/{id}`` (the shipment and its tracking events, fetched concurrently),
``GET /api/customers/{cid}/shipments`` and ``POST /api/shipments``. An upstream 4xx is passed on
as it is; an upstream that fails answers 502, one that is too slow 504, each naming the upstream.

Run one replica with
``PORT=8080 SHIPMENT_URL=http://127.0.0.1:8081 TRACKING_URL=http://127.0.0.1:8082 python -m tmsops.demo.gateway``.
Environment, besides the service-time variables of :mod:`tmsops.demo.common` (here 1 ms CPU, 5 ms wait):

- ``SHIPMENT_URL``, ``TRACKING_URL`` (required): base URLs of the two upstreams.
- ``UPSTREAM_TIMEOUT_S``: timeout of each upstream call (default 5).
- ``UPSTREAM_CONNECTIONS``: keep-alive connections to each upstream, at most (default ``CONCURRENCY``:
  a request in progress makes at most one call to each, so no call waits for a connection).

Each upstream has its own shared ``httpx.AsyncClient``: httpx checks every connection of its pool on
each call, so a pool larger than needed (or shared by both upstreams) costs CPU time per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tmsops.demo.common import Profile, ServiceError, build_app, env_base_url, env_float, env_int, run

SHIPMENT = "shipment-service"
TRACKING = "tracking-service"


@dataclass(frozen=True)
class GatewaySettings:
    """api-gateway settings read from the environment."""

    shipment_url: str
    tracking_url: str
    timeout_s: float = 5.0
    connections: int = 8

    @classmethod
    def from_env(cls, profile: Profile) -> GatewaySettings:
        """Settings from the environment; the connection limit defaults to the replica's concurrency."""
        return cls(
            shipment_url=env_base_url("SHIPMENT_URL"),
            tracking_url=env_base_url("TRACKING_URL"),
            timeout_s=env_float("UPSTREAM_TIMEOUT_S", 5.0, minimum=0.001),
            connections=env_int("UPSTREAM_CONNECTIONS", profile.concurrency, minimum=1, maximum=10_000),
        )


def upstream_failure(upstream: str, error: httpx.HTTPError, timeout_s: float) -> ServiceError:
    """504 for a timeout, 502 for any other transport failure, naming the upstream."""
    details = {"upstream": upstream}
    if isinstance(error, httpx.TimeoutException):
        return ServiceError(504, "upstream_timeout", f"{upstream} did not answer within {timeout_s:g} s", details)
    message = f"{upstream} is unreachable: {type(error).__name__}: {error}"
    return ServiceError(502, "upstream_unavailable", message, details)


def answer_of(upstream: str, response: httpx.Response) -> dict[str, Any]:
    """An upstream's JSON object; 502 naming the upstream when the body is not one."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        message = f"{upstream} answered something other than a JSON object"
        raise ServiceError(502, "upstream_invalid", message, {"upstream": upstream})
    return data


def passed_on(response: httpx.Response) -> Response:
    """An upstream's answer as this gateway's answer."""
    return Response(response.content, response.status_code, media_type="application/json")


class Gateway:
    """The gateway's routes over one shared HTTP client per upstream."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._clients: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Open the upstream clients (keep-alive, bounded connections) for the app's lifetime."""
        upstreams = {SHIPMENT: self.settings.shipment_url, TRACKING: self.settings.tracking_url}
        async with AsyncExitStack() as stack:
            for name, url in upstreams.items():
                self._clients[name] = await stack.enter_async_context(self._client(url))
            yield
        self._clients.clear()

    def _client(self, base_url: str) -> httpx.AsyncClient:
        size = self.settings.connections
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        timeout = httpx.Timeout(self.settings.timeout_s)
        return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout, trust_env=False)

    async def call(self, upstream: str, method: str, path: str, **options: Any) -> httpx.Response:
        """One upstream request; ServiceError 502/504 when it fails, 502 when it answers 5xx."""
        try:
            response = await self._clients[upstream].request(method, path, **options)
        except httpx.HTTPError as error:
            raise upstream_failure(upstream, error, self.settings.timeout_s) from error
        if response.status_code >= 500:
            message = f"{upstream} answered {response.status_code}"
            raise ServiceError(502, "upstream_error", message, {"upstream": upstream, "status": response.status_code})
        return response

    async def get_shipment(self, request: Request) -> Response:
        """The shipment and its tracking events, fetched concurrently and merged."""
        shipment_id = request.path_params["id"]
        shipment, tracking = await asyncio.gather(
            self.call(SHIPMENT, "GET", f"/shipments/{shipment_id}"),
            self.call(TRACKING, "GET", f"/tracking/{shipment_id}"),
            return_exceptions=True,
        )
        for outcome in (shipment, tracking):
            if isinstance(outcome, BaseException):
                raise outcome
            if outcome.status_code >= 400:
                return passed_on(outcome)
        assert isinstance(shipment, httpx.Response) and isinstance(tracking, httpx.Response)
        events = answer_of(TRACKING, tracking).get("events", [])
        return JSONResponse({**answer_of(SHIPMENT, shipment), "tracking": events})

    async def customer_shipments(self, request: Request) -> Response:
        """The latest shipments of one customer."""
        params = {"customer_id": request.path_params["cid"]}
        if "limit" in request.query_params:
            params["limit"] = request.query_params["limit"]
        return passed_on(await self.call(SHIPMENT, "GET", "/shipments", params=params))

    async def create_shipment(self, request: Request) -> Response:
        """Forward a new shipment to shipment-service."""
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        body = await request.body()
        return passed_on(await self.call(SHIPMENT, "POST", "/shipments", content=body, headers=headers))

    def routes(self) -> list[Route]:
        return [
            Route("/api/shipments/{id:int}", self.get_shipment, methods=["GET"]),
            Route("/api/customers/{cid:int}/shipments", self.customer_shipments, methods=["GET"]),
            Route("/api/shipments", self.create_shipment, methods=["POST"]),
        ]


def create_app() -> Starlette:
    """The api-gateway app from the environment; EnvError names a bad variable."""
    profile = Profile.from_env(cpu_ms=1.0, service_time_ms=5.0)
    gateway = Gateway(GatewaySettings.from_env(profile))
    return build_app(gateway.routes(), profile, gateway.lifespan)


def main() -> None:
    run("api-gateway", create_app)


if __name__ == "__main__":
    main()
