"""shipment-service: shipments in SQLite or PostgreSQL, with an optional Redis cache of lookups by id.

Routes: ``GET /shipments/{id}`` (404 when missing), ``GET /shipments?customer_id=N&limit=50``
and ``POST /shipments`` (201; 422 on bad input). The table has no index on ``customer_id``
on purpose: the list query scans it, and the optimizer is expected to find that.

Run one replica with ``PORT=8081 DATABASE_URL=sqlite:///state/shipments.db python -m tmsops.demo.shipment``.
Environment, besides the service-time variables of :mod:`tmsops.demo.common`:

- ``DATABASE_URL`` (required): ``sqlite:///path`` (the folder is created) or ``postgresql://...``.
- ``DB_SCHEMA``: the PostgreSQL schema of the table (default ``tms``).
- ``DB_POOL_SIZE``: database connections (PostgreSQL) or threads (SQLite) per replica (default 4).
- ``SEED_ROWS``: rows written, the same every time, when the table is empty at start (default 20000).
- ``REDIS_URL``: cache ``GET /shipments/{id}`` in Redis when set (``redis://host:port/db``).
- ``CACHE_TTL_S`` (default 300), ``CACHE_PREFIX`` (default ``tms:shipment:``), ``REDIS_TIMEOUT_S`` (default 0.5).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tmsops.demo.common import CITIES, EnvError, Profile, ServiceError, build_app, env_float, env_int, env_str, run

log = logging.getLogger("tmsops.demo.shipment")

T = TypeVar("T")
Row = dict[str, Any]

CUSTOMERS = 1000
SEED = 20240101
SEED_START = datetime(2024, 1, 1)
MAX_ID = 2**63 - 1
MAX_LIST = 500
STATUSES = ("created", "picked_up", "in_transit", "out_for_delivery", "delivered", "exception")
COLUMNS = ("id", "customer_id", "status", "origin", "destination", "weight_kg", "created_at")
NEW_COLUMNS = COLUMNS[1:]
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
REDIS_RETRY_S = 5.0
BUSY_TIMEOUT_S = 5.0  # how long SQLite waits for another replica's write lock


@dataclass(frozen=True)
class ShipmentSettings:
    """shipment-service settings read from the environment."""

    database_url: str
    schema: str = "tms"
    pool_size: int = 4
    seed_rows: int = 20000
    redis_url: str | None = None
    cache_ttl_s: float = 300.0
    cache_prefix: str = "tms:shipment:"
    redis_timeout_s: float = 0.5

    @classmethod
    def from_env(cls) -> ShipmentSettings:
        """Settings from the environment; EnvError names a bad variable."""
        settings = cls(
            database_url=env_str("DATABASE_URL"),
            schema=env_str("DB_SCHEMA", "tms"),
            pool_size=env_int("DB_POOL_SIZE", 4, minimum=1, maximum=100),
            seed_rows=env_int("SEED_ROWS", 20000),
            redis_url=env_str("REDIS_URL", "") or None,
            cache_ttl_s=env_float("CACHE_TTL_S", 300.0, minimum=1.0),
            cache_prefix=env_str("CACHE_PREFIX", "tms:shipment:"),
            redis_timeout_s=env_float("REDIS_TIMEOUT_S", 0.5, minimum=0.01),
        )
        if not SCHEMA_NAME.fullmatch(settings.schema):
            raise EnvError("DB_SCHEMA", f"{settings.schema!r} must be lower-case letters, digits and '_'")
        return settings


class NewShipment(BaseModel):
    """The body of ``POST /shipments``."""

    model_config = ConfigDict(extra="forbid")

    customer_id: int = Field(ge=1, le=2**31 - 1)
    origin: str = Field(min_length=1, max_length=100)
    destination: str = Field(min_length=1, max_length=100)
    weight_kg: float = Field(gt=0, le=100_000)
    status: Literal["created", "picked_up", "in_transit", "out_for_delivery", "delivered", "exception"] = "created"

    def values(self, created_at: datetime) -> tuple[Any, ...]:
        """Column values in ``NEW_COLUMNS`` order."""
        return (self.customer_id, self.status, self.origin, self.destination, self.weight_kg, created_at)


def seed_rows(count: int) -> Iterator[tuple[Any, ...]]:
    """``count`` shipments in ``COLUMNS`` order, the same ones every time."""
    rng = random.Random(SEED)
    for shipment_id in range(1, count + 1):
        origin, destination = rng.sample(CITIES, 2)
        weight = round(rng.lognormvariate(3.0, 1.0), 2)
        created_at = SEED_START + timedelta(minutes=10 * shipment_id)
        yield (shipment_id, rng.randint(1, CUSTOMERS), rng.choice(STATUSES), origin, destination, weight, created_at)


def now() -> datetime:
    """The current UTC time, naive, to the second (the column is ``timestamp`` without zone)."""
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def as_row(values: tuple[Any, ...]) -> Row:
    """A database row as JSON-ready data."""
    row = dict(zip(COLUMNS, values, strict=True))
    created = row["created_at"]
    row["created_at"] = created.isoformat() if isinstance(created, datetime) else str(created).replace(" ", "T")
    return row


class Store(Protocol):
    """Where shipments live."""

    temporary_errors: tuple[type[Exception], ...]

    async def open(self, seed_count: int) -> None: ...
    async def close(self) -> None: ...
    async def get(self, shipment_id: int) -> Row | None: ...
    async def by_customer(self, customer_id: int, limit: int) -> list[Row]: ...
    async def create(self, new: NewShipment) -> Row: ...


SELECT = f"SELECT {', '.join(COLUMNS)} FROM shipments"
INSERT = f"INSERT INTO shipments ({', '.join(NEW_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?)"
SQLITE_TABLE = """CREATE TABLE IF NOT EXISTS shipments (
    id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, status TEXT NOT NULL, origin TEXT NOT NULL,
    destination TEXT NOT NULL, weight_kg REAL NOT NULL, created_at TIMESTAMP NOT NULL)"""


class SqliteStore:
    """Shipments in one SQLite file, used from a few threads (one connection each) off the event loop.

    ``id INTEGER PRIMARY KEY`` is SQLite's 64-bit rowid, so new rows take the next id atomically.
    """

    temporary_errors: tuple[type[Exception], ...] = (sqlite3.OperationalError,)

    def __init__(self, path: Path, threads: int) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="sqlite")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(function, *args))

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(
                self._path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    async def open(self, seed_count: int) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        await self._run(self._setup, seed_count)

    def _setup(self, seed_count: int) -> None:
        """Create and seed the table once, even when several replicas start together."""
        connection = self._connection()
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute(SQLITE_TABLE)
            if connection.execute("SELECT 1 FROM shipments LIMIT 1").fetchone() is None:
                rows = ((*row[:-1], row[-1].isoformat()) for row in seed_rows(seed_count))
                connection.executemany(f"INSERT INTO shipments ({', '.join(COLUMNS)}) VALUES (?,?,?,?,?,?,?)", rows)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()

    async def get(self, shipment_id: int) -> Row | None:
        return await self._run(self._get, shipment_id)

    def _get(self, shipment_id: int) -> Row | None:
        found = self._connection().execute(f"{SELECT} WHERE id = ?", (shipment_id,)).fetchone()
        return as_row(found) if found else None

    async def by_customer(self, customer_id: int, limit: int) -> list[Row]:
        return await self._run(self._by_customer, customer_id, limit)

    def _by_customer(self, customer_id: int, limit: int) -> list[Row]:
        query = f"{SELECT} WHERE customer_id = ? ORDER BY created_at DESC, id DESC LIMIT ?"
        return [as_row(found) for found in self._connection().execute(query, (customer_id, limit))]

    async def create(self, new: NewShipment) -> Row:
        return await self._run(self._create, new)

    def _create(self, new: NewShipment) -> Row:
        created_at = now()
        values = new.values(created_at)
        cursor = self._connection().execute(INSERT, (*values[:-1], created_at.isoformat()))
        return as_row((cursor.lastrowid, *values))


class PgPool:
    """A few lazily opened psycopg connections shared by the requests of one replica."""

    def __init__(self, conninfo: str, size: int) -> None:
        self._conninfo = conninfo
        self._idle: asyncio.Queue[Any] = asyncio.Queue()
        for _ in range(size):
            self._idle.put_nowait(None)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """An open connection in autocommit mode; a broken one is dropped and reopened next time."""
        import psycopg

        connection = await self._idle.get()
        try:
            if connection is None or connection.closed:
                connection = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=5, application_name="tmsops-demo-shipment"
                )
            yield connection
        except BaseException:
            connection = await _discard_if_broken(connection)
            raise
        finally:
            self._idle.put_nowait(connection)

    async def close(self) -> None:
        while not self._idle.empty():
            connection = self._idle.get_nowait()
            if connection is not None:
                await connection.close()


async def _discard_if_broken(connection: Any) -> Any:
    """The connection if it is idle and usable, else None (after closing it)."""
    from psycopg import pq

    if connection is None or (
        not connection.closed and connection.info.transaction_status == pq.TransactionStatus.IDLE
    ):
        return connection
    await connection.close()
    return None


class PostgresStore:
    """Shipments in ``<schema>.shipments`` in PostgreSQL, through a small connection pool."""

    def __init__(self, url: str, schema: str, pool_size: int) -> None:
        import psycopg

        self.temporary_errors: tuple[type[Exception], ...] = (psycopg.OperationalError,)
        self._pool = PgPool(re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url), pool_size)
        self._schema = schema
        self._table = f"{schema}.shipments"
        self._select = f"SELECT {', '.join(COLUMNS)} FROM {self._table}"

    async def open(self, seed_count: int) -> None:
        async with self._pool.connection() as connection, connection.transaction():
            await self._setup(connection, seed_count)

    async def _setup(self, connection: Any, seed_count: int) -> None:
        """Create and seed the table once, under an advisory lock so replicas starting together wait."""
        await connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"tmsops.demo.{self._schema}",))
        await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {self._schema}")
        await connection.execute(
            f"""CREATE TABLE IF NOT EXISTS {self._table} (
            id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, customer_id int NOT NULL,
            status text NOT NULL, origin text NOT NULL, destination text NOT NULL,
            weight_kg real NOT NULL, created_at timestamp NOT NULL)"""
        )
        cursor = await connection.execute(f"SELECT EXISTS (SELECT 1 FROM {self._table})")
        if not (await cursor.fetchone())[0]:
            await self._seed(connection, seed_count)

    async def _seed(self, connection: Any, count: int) -> None:
        async with connection.cursor().copy(f"COPY {self._table} ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in seed_rows(count):
                await copy.write_row(row)
        await connection.execute(
            f"SELECT setval(pg_get_serial_sequence(%s, 'id'), GREATEST((SELECT max(id) FROM {self._table}), 1))",
            (self._table,),
        )

    async def close(self) -> None:
        await self._pool.close()

    async def get(self, shipment_id: int) -> Row | None:
        async with self._pool.connection() as connection:
            cursor = await connection.execute(f"{self._select} WHERE id = %s", (shipment_id,))
            found = await cursor.fetchone()
        return as_row(found) if found else None

    async def by_customer(self, customer_id: int, limit: int) -> list[Row]:
        query = f"{self._select} WHERE customer_id = %s ORDER BY created_at DESC, id DESC LIMIT %s"
        async with self._pool.connection() as connection:
            cursor = await connection.execute(query, (customer_id, limit))
            return [as_row(found) for found in await cursor.fetchall()]

    async def create(self, new: NewShipment) -> Row:
        values = new.values(now())
        query = f"INSERT INTO {self._table} ({', '.join(NEW_COLUMNS)}) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id"
        async with self._pool.connection() as connection:
            cursor = await connection.execute(query, values)
            (shipment_id,) = await cursor.fetchone()
        return as_row((shipment_id, *values))


def make_store(settings: ShipmentSettings) -> Store:
    """The store ``DATABASE_URL`` names; EnvError for anything else."""
    url = settings.database_url
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not path or path == ":memory:":
            raise EnvError("DATABASE_URL", "SQLite needs a file path (sqlite:///path/to/file.db) shared by replicas")
        return SqliteStore(Path(path), settings.pool_size)
    if re.match(r"postgres(ql)?(\+\w+)?://", url):
        return PostgresStore(url, settings.schema, settings.pool_size)
    raise EnvError("DATABASE_URL", f"{url!r} is neither sqlite:///path nor postgresql://...")


class Cache:
    """Shipments by id in Redis. A Redis error counts as a miss, is logged (at most every 10 s),
    and rests the cache for ``REDIS_RETRY_S`` so a dead Redis does not slow every request."""

    def __init__(self, url: str, ttl_s: float, prefix: str, timeout_s: float) -> None:
        import redis.asyncio

        self._client = redis.asyncio.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError, TimeoutError)
        self._ttl_ms = int(ttl_s * 1000)
        self._prefix = prefix
        self._resting_until = 0.0
        self._last_warning = 0.0

    def key(self, shipment_id: int) -> str:
        return f"{self._prefix}{shipment_id}"

    def resting(self) -> bool:
        """True for a while after a Redis error: the cache is skipped."""
        return time.monotonic() < self._resting_until

    async def get(self, shipment_id: int) -> Row | None:
        if self.resting():
            return None
        with self._tolerant("get"):
            cached = await self._client.get(self.key(shipment_id))
            return json.loads(cached) if cached else None
        return None

    async def put(self, row: Row) -> None:
        if not self.resting():
            with self._tolerant("set"):
                await self._client.set(self.key(row["id"]), json.dumps(row), px=self._ttl_ms)

    async def forget(self, shipment_id: int) -> None:
        if not self.resting():
            with self._tolerant("delete"):
                await self._client.delete(self.key(shipment_id))

    async def close(self) -> None:
        with self._tolerant("close"):
            await self._client.aclose()

    @contextmanager
    def _tolerant(self, operation: str) -> Iterator[None]:
        try:
            yield
        except self._errors as error:
            now_s = time.monotonic()
            self._resting_until = now_s + REDIS_RETRY_S
            if now_s - self._last_warning > 10:
                self._last_warning = now_s
                log.warning("redis %s failed, using the database: %s: %s", operation, type(error).__name__, error)


class ShipmentService:
    """The routes of shipment-service over a store and an optional cache."""

    def __init__(self, settings: ShipmentSettings) -> None:
        self.settings = settings
        self.store = make_store(settings)
        self.cache: Cache | None = None

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Create and seed the table before serving; close the store and the cache after."""
        settings = self.settings
        await self.store.open(settings.seed_rows)
        if settings.redis_url:
            self.cache = Cache(
                settings.redis_url, settings.cache_ttl_s, settings.cache_prefix, settings.redis_timeout_s
            )
        try:
            yield
        finally:
            if self.cache:
                await self.cache.close()
            await self.store.close()

    @contextmanager
    def _database(self) -> Iterator[None]:
        try:
            yield
        except self.store.temporary_errors as error:
            raise ServiceError(503, "database_unavailable", f"the database failed: {error}") from error

    async def get_shipment(self, request: Request) -> Response:
        """One shipment by id, from the cache when it holds it."""
        shipment_id = request.path_params["id"]
        row = await self.cache.get(shipment_id) if self.cache and shipment_id <= MAX_ID else None
        headers = {"X-Cache": "hit" if row else "miss"} if self.cache else {}
        if row is None and shipment_id <= MAX_ID:
            with self._database():
                row = await self.store.get(shipment_id)
            if row and self.cache:
                await self.cache.put(row)
        if row is None:
            raise ServiceError(404, "not_found", f"shipment {shipment_id} not found")
        return JSONResponse(row, headers=headers)

    async def list_shipments(self, request: Request) -> Response:
        """The latest shipments of one customer (the unindexed query)."""
        customer_id = query_int(request, "customer_id", None, 1, 2**31 - 1)
        limit = query_int(request, "limit", 50, 1, MAX_LIST)
        with self._database():
            rows = await self.store.by_customer(customer_id, limit)
        return JSONResponse({"customer_id": customer_id, "shipments": rows})

    async def create_shipment(self, request: Request) -> Response:
        """Store a new shipment; 201 with it."""
        new = await parse_body(request)
        with self._database():
            row = await self.store.create(new)
        if self.cache:
            await self.cache.forget(row["id"])
        return JSONResponse(row, status_code=201, headers={"Location": f"/shipments/{row['id']}"})

    def routes(self) -> list[Route]:
        return [
            Route("/shipments/{id:int}", self.get_shipment, methods=["GET"]),
            Route("/shipments", self.list_shipments, methods=["GET"]),
            Route("/shipments", self.create_shipment, methods=["POST"]),
        ]


def query_int(request: Request, name: str, default: int | None, minimum: int, maximum: int) -> int:
    """An integer query parameter within bounds; 422 naming it otherwise."""
    text = request.query_params.get(name)
    if text is None and default is not None:
        return default
    try:
        value = int(text or "")
    except ValueError:
        raise ServiceError(422, "validation_error", f"{name}: an integer is required, got {text!r}") from None
    if not minimum <= value <= maximum:
        raise ServiceError(422, "validation_error", f"{name}: {value} is outside {minimum} .. {maximum}")
    return value


async def parse_body(request: Request) -> NewShipment:
    """The request's JSON body as a NewShipment; 422 naming the fields otherwise."""
    try:
        data = json.loads(await request.body())
    except ValueError as error:
        raise ServiceError(422, "invalid_json", f"the body is not JSON: {error}") from None
    try:
        return NewShipment.model_validate(data)
    except ValidationError as error:
        problems = [
            {"field": ".".join(str(part) for part in item["loc"]) or "body", "message": item["msg"]}
            for item in error.errors()
        ]
        message = "; ".join(f"{problem['field']}: {problem['message']}" for problem in problems)
        raise ServiceError(422, "validation_error", message, {"errors": problems}) from None


def create_app() -> Starlette:
    """The shipment-service app from the environment; EnvError names a bad variable."""
    service = ShipmentService(ShipmentSettings.from_env())
    return build_app(service.routes(), Profile.from_env(), service.lifespan)


def main() -> None:
    run("shipment-service", create_app)


if __name__ == "__main__":
    main()
