"""A service's reverse proxy: HTTP/1.1 on asyncio with h11 on both sides.

It balances requests over the replicas in its pool (fewest requests in flight first),
keeps connections to them alive, counts every request in the fleet's metrics, and
applies the network faults in effect (latency, bandwidth, resets, errors) the way
Toxiproxy does, since this kernel has no ``tc netem``.

Bodies are buffered (up to :data:`MAX_BODY_BYTES`): the demo services and the control
traffic tmsops proxies are small JSON requests. A replica leaves the pool before it is
stopped, and :meth:`ServiceProxy.drain` waits for its requests in flight, so a scale-down
fails no request. A failure before any response byte is retried on another replica
when the method is idempotent, or on a fresh connection when a kept-alive one had gone
stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import h11

from tmsops.fleet.metrics import FleetMetrics, RouteLabels
from tmsops.targets.base import PortInUse

MAX_BODY_BYTES = 16 * 2**20
IDLE_UPSTREAM_S = 4.0
READ_CHUNK = 65536
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS"})
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)

log = logging.getLogger("tmsops.fleet.proxy")


@dataclass(frozen=True)
class ProxyEffects:
    """What the faults in effect do to one request routed to one replica."""

    delay_s: float = 0.0
    reset: bool = False
    error_status: int | None = None
    rate_bytes_per_s: float | None = None


NO_EFFECTS = ProxyEffects()
EffectsFor = Callable[[str], ProxyEffects]


class UpstreamFailed(Exception):
    """No response byte arrived from a replica; ``reused`` says the connection was a kept-alive one."""

    def __init__(self, cause: str, *, reused: bool) -> None:
        super().__init__(cause)
        self.reused = reused


@dataclass
class Upstream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: h11.Connection
    idle_since: float = 0.0

    def close(self) -> None:
        self.writer.close()


@dataclass
class Backend:
    """One replica in the pool."""

    id: str
    host: str
    port: int
    in_flight: int = 0
    idle: list[Upstream] = field(default_factory=list)
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def take_idle(self) -> Upstream | None:
        now = time.monotonic()
        while self.idle:
            upstream = self.idle.pop()
            if now - upstream.idle_since < IDLE_UPSTREAM_S and not upstream.reader.at_eof():
                return upstream
            upstream.close()
        return None

    def close_idle(self) -> None:
        for upstream in self.idle:
            upstream.close()
        self.idle.clear()


@dataclass
class Exchange:
    """A request read from a client and what became of it."""

    request: h11.Request
    body: bytes
    started: float = field(default_factory=time.perf_counter)


class ServiceProxy:
    """The proxy of one service on ``host:port``."""

    def __init__(
        self,
        service: str,
        host: str,
        port: int,
        metrics: FleetMetrics,
        effects_for: EffectsFor | None = None,
        *,
        no_replica_wait_s: float = 5.0,
        upstream_timeout_s: float = 30.0,
    ) -> None:
        self.service = service
        self.host = host
        self.port = port
        self._metrics = metrics
        self._effects_for = effects_for or (lambda _replica: NO_EFFECTS)
        self._no_replica_wait_s = no_replica_wait_s
        self._upstream_timeout_s = upstream_timeout_s
        self._pool: dict[str, Backend] = {}
        self._leaving: dict[str, Backend] = {}
        self._pool_changed = asyncio.Condition()
        self._turn = itertools.count()
        self._server: asyncio.Server | None = None
        self._in_flight = metrics.in_flight.labels(service=service)
        self._duration = metrics.duration.labels(service=service)
        self._requests = metrics.requests
        self._routes = RouteLabels()
        self._route_requests = metrics.route_requests
        self._route_duration = metrics.route_duration
        self._client_connections = metrics.client_connections.labels(service=service)
        self._upstream_connections = metrics.upstream_connections.labels(service=service)
        self.answered = 0
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    @property
    def replicas(self) -> list[str]:
        return list(self._pool)

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        except OSError as error:
            raise PortInUse(
                f"service {self.service}: cannot listen on {self.host}:{self.port}: {error.strerror}",
                retry_after=5.0,
                details={"service": self.service, "port": self.port},
            ) from error

    async def stop(self) -> None:
        """Stop listening and close every client connection (their requests have been drained before)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in self._clients.values():
            writer.transport.abort()
        await asyncio.gather(*self._clients, return_exceptions=True)
        for backend in [*self._pool.values(), *self._leaving.values()]:
            backend.close_idle()

    async def add(self, replica: str, host: str, port: int) -> None:
        async with self._pool_changed:
            self._pool[replica] = Backend(replica, host, port)
            self._pool_changed.notify_all()

    async def drain(self, replica: str, timeout_s: float) -> bool:
        """Take ``replica`` out of the pool and wait for its requests in flight; True when none is left."""
        backend = self._pool.pop(replica, None)
        if backend is None:
            return True
        self._leaving[replica] = backend
        if backend.in_flight == 0:
            backend.drained.set()
        try:
            await asyncio.wait_for(backend.drained.wait(), timeout_s)
        except TimeoutError:
            log.warning(
                "replica %s still had %d requests in flight after %.0f s", replica, backend.in_flight, timeout_s
            )
        finally:
            self._leaving.pop(replica, None)
            backend.close_idle()
        return backend.in_flight == 0

    def drop(self, replica: str) -> None:
        """Forget a replica at once (it crashed): its requests in flight fail."""
        backend = self._pool.pop(replica, None)
        if backend is not None:
            backend.close_idle()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = writer
        self._client_connections.inc()
        try:
            await self._serve(reader, writer)
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.pop(task, None)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            try:
                exchange = await _read_request(conn, reader)
            except h11.RemoteProtocolError as error:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await _send_error(conn, writer, error.error_status_hint, f"{self.service}: {error}")
                return
            if exchange is None:
                return
            keep_open = await self._answer(conn, writer, exchange)
            if not keep_open or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _answer(self, conn: h11.Connection, writer: asyncio.StreamWriter, exchange: Exchange) -> bool:
        self._in_flight.inc()
        try:
            status, keep_open = await self._route(conn, writer, exchange)
        finally:
            self._in_flight.dec()
        elapsed = time.perf_counter() - exchange.started
        code = str(status) if status else "reset"
        route = self._routes.label(exchange.request.method, exchange.request.target)
        self.answered += 1
        self._requests.labels(service=self.service, code=code).inc()
        self._duration.observe(elapsed)
        self._route_requests.labels(service=self.service, route=route, code=code).inc()
        self._route_duration.labels(service=self.service, route=route).observe(elapsed)
        return keep_open

    async def _route(self, conn: h11.Connection, writer: asyncio.StreamWriter, exchange: Exchange) -> tuple[int, bool]:
        tried: set[str] = set()
        while True:
            backend = await self._pick(tried)
            if backend is None:
                return await _send_error(conn, writer, 503, f"{self.service}: no ready replica"), True
            effects = self._effects_for(backend.id)
            if effects.reset:
                _reset(writer)
                return 0, False
            if effects.error_status is not None:
                message = f"{self.service}: unavailable (injected fault)"
                return await _send_error(conn, writer, effects.error_status, message), True
            if effects.delay_s > 0:
                await asyncio.sleep(effects.delay_s)
            try:
                response, body = await self._forward(backend, exchange)
            except UpstreamFailed as failure:
                tried.add(backend.id)
                if failure.reused or exchange.request.method in IDEMPOTENT:
                    continue
                return await _send_error(conn, writer, 502, f"{self.service}: {failure}"), True
            except TimeoutError:
                return await _send_error(conn, writer, 504, f"{self.service}: replica {backend.id} timed out"), True
            head = exchange.request.method == b"HEAD"
            await _send_response(conn, writer, response, body, effects.rate_bytes_per_s, head=head)
            return response.status_code, True

    async def _pick(self, tried: set[str]) -> Backend | None:
        """The ready replica with the fewest requests in flight, waiting a little when there is none."""
        chosen = self._least_busy(tried)
        if chosen is not None or tried:
            return chosen
        deadline = time.monotonic() + self._no_replica_wait_s
        async with self._pool_changed:
            while True:
                chosen = self._least_busy(tried)
                if chosen is not None:
                    return chosen
                remaining = deadline - time.monotonic()
                if tried or remaining <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._pool_changed.wait(), remaining)

    def _least_busy(self, tried: set[str]) -> Backend | None:
        candidates = [backend for backend in self._pool.values() if backend.id not in tried]
        if not candidates:
            return None
        turn = next(self._turn) % len(candidates)
        return min(candidates[turn:] + candidates[:turn], key=lambda backend: backend.in_flight)

    async def _forward(self, backend: Backend, exchange: Exchange) -> tuple[h11.Response, bytes]:
        backend.in_flight += 1
        try:
            async with asyncio.timeout(self._upstream_timeout_s):
                return await self._exchange(backend, exchange)
        finally:
            backend.in_flight -= 1
            if backend.in_flight == 0 and backend.id in self._leaving:
                backend.drained.set()

    async def _exchange(self, backend: Backend, exchange: Exchange) -> tuple[h11.Response, bytes]:
        upstream = backend.take_idle()
        reused = upstream is not None
        if upstream is None:
            upstream = await _connect(backend)
            self._upstream_connections.inc()
        try:
            response, body = await _round_trip(upstream, exchange, reused)
        except BaseException:
            upstream.close()
            raise
        if upstream.conn.our_state is h11.DONE and upstream.conn.their_state is h11.DONE and backend.id in self._pool:
            upstream.conn.start_next_cycle()
            upstream.idle_since = time.monotonic()
            backend.idle.append(upstream)
        else:
            upstream.close()
        return response, body


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> Exchange | None:
    request: h11.Request | None = None
    chunks: list[bytes] = []
    size = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(READ_CHUNK))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_BODY_BYTES:
                raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
            chunks.append(event.data)
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return Exchange(request, b"".join(chunks))
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


async def _connect(backend: Backend) -> Upstream:
    try:
        reader, writer = await asyncio.open_connection(backend.host, backend.port)
    except OSError as error:
        raise UpstreamFailed(f"replica {backend.id}: {error.strerror or error}", reused=False) from error
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return Upstream(reader, writer, h11.Connection(h11.CLIENT))


async def _round_trip(upstream: Upstream, exchange: Exchange, reused: bool) -> tuple[h11.Response, bytes]:
    request = exchange.request
    headers = [*_end_to_end(request.headers), (b"content-length", str(len(exchange.body)).encode())]
    outgoing = h11.Request(method=request.method, target=request.target, headers=headers)
    data = upstream.conn.send(outgoing) or b""
    if exchange.body:
        data += upstream.conn.send(h11.Data(data=exchange.body)) or b""
    data += upstream.conn.send(h11.EndOfMessage()) or b""
    try:
        upstream.writer.write(data)
        await upstream.writer.drain()
        return await _read_response(upstream, reused)
    except (ConnectionError, h11.RemoteProtocolError) as error:
        raise UpstreamFailed(f"connection to the replica failed: {error}", reused=reused) from error


async def _read_response(upstream: Upstream, reused: bool) -> tuple[h11.Response, bytes]:
    response: h11.Response | None = None
    chunks: list[bytes] = []
    while True:
        event = upstream.conn.next_event()
        if event is h11.NEED_DATA:
            upstream.conn.receive_data(await upstream.reader.read(READ_CHUNK))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            chunks.append(event.data)
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            return response, b"".join(chunks)
        elif isinstance(event, h11.ConnectionClosed):
            if response is None:
                raise UpstreamFailed("the replica closed the connection before answering", reused=reused)
            raise ConnectionError("the replica closed the connection in the middle of its answer")


def _end_to_end(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in headers if name.lower() not in HOP_BY_HOP]


async def _send_response(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    upstream_response: h11.Response,
    body: bytes,
    rate_bytes_per_s: float | None,
    *,
    head: bool = False,
) -> None:
    """The replica's answer to the client; to a HEAD request with the replica's own Content-Length."""
    length = [(name, value) for name, value in upstream_response.headers if name.lower() == b"content-length"]
    framing = length if head else [(b"content-length", str(len(body)).encode())]
    headers = [*_end_to_end(upstream_response.headers), *framing]
    writer.write(conn.send(h11.Response(status_code=upstream_response.status_code, headers=headers)) or b"")
    if body:
        payload = conn.send(h11.Data(data=body)) or b""
        await _write_throttled(writer, payload, rate_bytes_per_s)
    writer.write(conn.send(h11.EndOfMessage()) or b"")
    await writer.drain()


async def _write_throttled(writer: asyncio.StreamWriter, payload: bytes, rate_bytes_per_s: float | None) -> None:
    if rate_bytes_per_s is None:
        writer.write(payload)
        return
    chunk = max(1, int(rate_bytes_per_s / 20))
    for start in range(0, len(payload), chunk):
        piece = payload[start : start + chunk]
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(len(piece) / rate_bytes_per_s)


async def _send_error(conn: h11.Connection, writer: asyncio.StreamWriter, status: int, message: str) -> int:
    body = json.dumps({"error": {"code": "proxy_error", "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
    writer.write(conn.send(h11.Data(data=body)) or b"")
    writer.write(conn.send(h11.EndOfMessage()) or b"")
    await writer.drain()
    return status


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close the client's connection with a TCP RST, as a crashed or refusing peer would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
