"""A TCP proxy in front of a service's dependency (a database, a cache), to make it slow on demand.

The fleet starts one per declared dependency of a service on a free port and gives the
service that address (``{dependency:NAME}``). Each chunk the service sends waits the
delay in effect before it is passed on, so every round trip to the dependency takes that
much longer, as with ``tc netem delay`` on the link.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

CHUNK = 65536


class DependencyProxy:
    def __init__(self, name: str, upstream: str, delay_s: Callable[[], float]) -> None:
        self.name = name
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self._delay_s = delay_s
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        outbound = asyncio.create_task(self._pipe(reader, up_writer, delayed=True))
        inbound = asyncio.create_task(self._pipe(up_reader, writer, delayed=False))
        self._pipes.update((outbound, inbound))
        await asyncio.gather(outbound, inbound, return_exceptions=True)
        self._pipes.difference_update((outbound, inbound))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool) -> None:
        try:
            while chunk := await reader.read(CHUNK):
                delay = self._delay_s() if delayed else 0.0
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
