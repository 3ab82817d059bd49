"""A minimal replica for trying a fleet out: ``python -m tmsops.fleet.echo`` on ``$PORT``.

``GET /health`` answers 200; ``GET /echo`` answers the replica's id (``$TMSOPS_REPLICA``),
after ``?sleep_ms=`` milliseconds if given; ``GET /bytes?n=`` answers ``n`` bytes. The
fleet's tests and its proxy benchmark use it as a replica with no work of its own.
"""

from __future__ import annotations

import asyncio
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MAX_SLEEP_MS = 60_000
MAX_BYTES = 16 * 2**20


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def echo(request: Request) -> Response:
    sleep_ms = _bounded(request, "sleep_ms", MAX_SLEEP_MS)
    if sleep_ms:
        await asyncio.sleep(sleep_ms / 1000)
    return JSONResponse({"replica": os.environ.get("TMSOPS_REPLICA", "")})


async def payload(request: Request) -> Response:
    return Response(b"x" * _bounded(request, "n", MAX_BYTES), media_type="application/octet-stream")


def _bounded(request: Request, name: str, limit: int) -> int:
    text = request.query_params.get(name, "0")
    return min(limit, max(0, int(text))) if text.isdigit() else 0


def build() -> Starlette:
    return Starlette(routes=[Route("/health", health), Route("/echo", echo), Route("/bytes", payload)])


def main() -> None:
    import uvicorn

    uvicorn.run(build(), host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
