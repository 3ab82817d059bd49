"""What the demo services share: settings from the environment, the service-time model, JSON errors, the runner.

Environment variables read by every service:

- ``PORT``: the port to listen on, on 127.0.0.1 (required).
- ``CONCURRENCY``: requests one replica serves at once (default 8); more wait in a queue.
- ``QUEUE_TIMEOUT_MS``: a request that waited longer than this for a slot gets 503 (default 2000).
- ``CPU_MS``: real CPU work per request, in ms of thread CPU time (default 2; gateway 1).
- ``SERVICE_TIME_MS``: mean wait per request, in ms (default 20; gateway 5).
- ``SERVICE_TIME_SIGMA``: spread of that wait, the sigma of a lognormal (default 0.4; 0 makes it constant).

A missing or unusable variable stops the process with exit code 2 and one line on stderr naming it.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

HOST = "127.0.0.1"
HEALTH_PATH = "/health"
GRACEFUL_SHUTDOWN_S = 8
# Longer than any client's idle expiry (httpx: 5 s), so the client, not the server, closes an idle
# keep-alive connection: no request is ever sent on a connection the server is closing.
KEEP_ALIVE_S = 65
CITIES = (
    "Amsterdam", "Barcelona", "Berlin", "Brussels", "Copenhagen", "Dublin", "Hamburg", "Lisbon",
    "Lyon", "Madrid", "Milan", "Munich", "Paris", "Prague", "Rotterdam", "Vienna", "Warsaw", "Zurich",
)  # fmt: skip

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


class EnvError(Exception):
    """An environment variable that is missing or unusable; the message names it."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name


class ServiceError(Exception):
    """An error answered as JSON ``{"error": {"code", "message", "details"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})


def env_str(name: str, default: str | None = None) -> str:
    """The variable's value, or ``default``; EnvError when it is unset and has no default."""
    value = os.environ.get(name, "").strip()
    if value:
        return value
    if default is None:
        raise EnvError(name, "is not set")
    return default


def env_int(name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    """An integer variable within ``minimum`` .. ``maximum``."""
    text = env_str(name, str(default))
    try:
        value = int(text)
    except ValueError:
        raise EnvError(name, f"{text!r} is not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise EnvError(name, f"{value} is outside {minimum} .. {maximum if maximum is not None else 'any'}")
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    """A finite number variable, at least ``minimum``."""
    text = env_str(name, str(default))
    try:
        value = float(text)
    except ValueError:
        raise EnvError(name, f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < minimum:
        raise EnvError(name, f"{text} must be a finite number of at least {minimum}")
    return value


def env_port() -> int:
    """``$PORT``: required, 1 .. 65535."""
    env_str("PORT")
    return env_int("PORT", 0, minimum=1, maximum=65535)


def env_base_url(name: str) -> str:
    """A required ``http://host[:port]`` base URL, without a trailing slash."""
    value = env_str(name)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EnvError(name, f"{value!r} is not an http(s) URL")
    return value.rstrip("/")


@dataclass(frozen=True)
class Profile:
    """The service-time model of one replica: bounded concurrency, CPU work and a wait per request."""

    concurrency: int = 8
    queue_timeout_ms: float = 2000.0
    cpu_ms: float = 2.0
    service_time_ms: float = 20.0
    sigma: float = 0.4

    @classmethod
    def from_env(cls, *, cpu_ms: float = 2.0, service_time_ms: float = 20.0) -> Profile:
        """The profile from the environment, with this service's default CPU and wait times."""
        return cls(
            concurrency=env_int("CONCURRENCY", 8, minimum=1, maximum=10_000),
            queue_timeout_ms=env_float("QUEUE_TIMEOUT_MS", 2000.0),
            cpu_ms=env_float("CPU_MS", cpu_ms),
            service_time_ms=env_float("SERVICE_TIME_MS", service_time_ms),
            sigma=env_float("SERVICE_TIME_SIGMA", 0.4),
        )

    def wait_s(self, rng: random.Random) -> float:
        """One request's wait in seconds: lognormal with mean ``service_time_ms``."""
        if self.service_time_ms <= 0:
            return 0.0
        if self.sigma <= 0:
            return self.service_time_ms / 1000
        mu = math.log(self.service_time_ms) - self.sigma**2 / 2
        return rng.lognormvariate(mu, self.sigma) / 1000


def burn_cpu(ms: float) -> None:
    """Spin for ``ms`` milliseconds of this thread's CPU time."""
    deadline = time.thread_time() + ms / 1000
    while time.thread_time() < deadline:
        pass


class ServiceModel:
    """ASGI middleware: at most ``concurrency`` requests at once, each doing CPU work and waiting.

    A request that waits longer than ``queue_timeout_ms`` for a slot gets 503. ``/health`` is exempt.
    """

    def __init__(self, app: ASGIApp, profile: Profile) -> None:
        self.app = app
        self.profile = profile
        self._slots = asyncio.Semaphore(profile.concurrency)
        self._rng = random.Random()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == HEALTH_PATH:
            await self.app(scope, receive, send)
            return
        if not await self._acquire():
            await self._overloaded()(scope, receive, send)
            return
        try:
            burn_cpu(self.profile.cpu_ms)
            await asyncio.sleep(self.profile.wait_s(self._rng))
            await self.app(scope, receive, send)
        finally:
            self._slots.release()

    async def _acquire(self) -> bool:
        if not self._slots.locked():
            await self._slots.acquire()
            return True
        try:
            await asyncio.wait_for(self._slots.acquire(), self.profile.queue_timeout_ms / 1000)
        except TimeoutError:
            return False
        return True

    def _overloaded(self) -> Response:
        message = f"waited more than {self.profile.queue_timeout_ms:g} ms for one of {self.profile.concurrency} slots"
        return error_response(503, "overloaded", message, headers={"Retry-After": "1"})


def error_response(
    status: int,
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The JSON error every demo service answers."""
    body = {"error": {"code": code, "message": message, "details": dict(details or {})}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _service_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ServiceError)
    return error_response(error.status, error.code, error.message, error.details)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    phrase = HTTPStatus(error.status_code).phrase
    code = phrase.lower().replace(" ", "_").replace("-", "_")
    return error_response(
        error.status_code, code, f"{phrase}: {request.method} {request.url.path}", None, error.headers
    )


async def _unexpected(request: Request, error: Exception) -> Response:
    return error_response(500, "internal_error", f"{type(error).__name__}: {error}")


async def health(request: Request) -> Response:
    """200 once the replica is ready: the app starts serving only after its lifespan started."""
    return JSONResponse({"status": "ok"})


def build_app(routes: Sequence[BaseRoute], profile: Profile, lifespan: Lifespan | None = None) -> Starlette:
    """A Starlette app with ``/health``, the service-time model and JSON errors."""
    return Starlette(
        routes=[Route(HEALTH_PATH, health, methods=["GET"]), *routes],
        middleware=[Middleware(ServiceModel, profile=profile)],
        exception_handlers={ServiceError: _service_error, HTTPException: _http_error, Exception: _unexpected},
        lifespan=lifespan,
    )


def run(name: str, build: Callable[[], ASGIApp]) -> None:
    """Read ``$PORT``, build the app and serve it with uvicorn; a bad variable exits with code 2."""
    try:
        port = env_port()
        app = build()
    except EnvError as error:
        print(f"{name}: {error}", file=sys.stderr)
        sys.exit(2)
    import uvicorn

    uvicorn.run(
        app,
        host=HOST,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
