"""A spatially sampled trace of the key accesses a Redis serves (SHARDS, Waldspurger et al., FAST'15).

A key is in the sample when a stable hash of its bytes, modulo ``P`` (2**24), is below
``R * P`` for the fixed sample rate ``R``: every access to a sampled key is kept, no access
to another key is. So reuse patterns are preserved per key, and the distances measured on
the sampled trace, scaled by ``1/R``, estimate the distances of the whole stream.

The stream comes from the ``MONITOR`` command, on a connection of its own, for a bounded
window: it stops at the end of the window, after ``max_events`` sampled accesses, when
:meth:`MonitorSampler.stop` is called, or when it falls more than ``max_lag_s`` behind the
server (a MONITOR client that does not keep up makes the server buffer its output, which
costs the server memory). A trace can also be built from a plain list of keys
(:func:`trace_from_keys`), for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Iterable, Iterator, Sequence
from enum import IntEnum
from typing import Literal, NamedTuple

import redis.asyncio as aioredis
from pydantic import BaseModel

HASH_MODULUS = 1 << 24
MAX_COUNTED_KEYS = 4_000_000
READ_CHUNK_BYTES = 1 << 16


class Op(IntEnum):
    READ = 0
    WRITE = 1
    DELETE = 2


class Access(NamedTuple):
    key: str
    op: Op
    time: float


# Which arguments of a command are keys: the first one, all of them, or every other one (MSET).
KeyPositions = Literal["first", "all", "pairs"]

_FIRST_KEY_READS = (
    "GET GETEX GETDEL STRLEN GETRANGE SUBSTR GETBIT BITCOUNT BITPOS HGET HMGET HGETALL HEXISTS HLEN HKEYS HVALS "
    "HSTRLEN HRANDFIELD LRANGE LINDEX LLEN LPOS SMEMBERS SISMEMBER SMISMEMBER SCARD SRANDMEMBER ZRANGE "
    "ZRANGEBYSCORE ZRANGEBYLEX ZREVRANGE ZREVRANGEBYSCORE ZSCORE ZMSCORE ZCARD ZCOUNT ZRANK ZREVRANK"
)
_ALL_KEY_READS = "MGET EXISTS PFCOUNT"
_FIRST_KEY_WRITES = (
    "SET SETEX PSETEX SETNX GETSET APPEND SETRANGE SETBIT INCR INCRBY INCRBYFLOAT DECR DECRBY HSET HMSET HSETNX "
    "HINCRBY HINCRBYFLOAT HDEL LPUSH RPUSH LPUSHX RPUSHX LPOP RPOP LSET LREM LTRIM SADD SREM SPOP ZADD ZREM ZINCRBY "
    "ZPOPMIN ZPOPMAX PFADD EXPIRE PEXPIRE EXPIREAT PEXPIREAT PERSIST"
)
_PAIR_KEY_WRITES = "MSET MSETNX"
_ALL_KEY_DELETES = "DEL UNLINK"


def _table() -> dict[bytes, tuple[Op, KeyPositions]]:
    table: dict[bytes, tuple[Op, KeyPositions]] = {}
    groups: list[tuple[str, Op, KeyPositions]] = [
        (_FIRST_KEY_READS, Op.READ, "first"),
        (_ALL_KEY_READS, Op.READ, "all"),
        (_FIRST_KEY_WRITES, Op.WRITE, "first"),
        (_PAIR_KEY_WRITES, Op.WRITE, "pairs"),
        (_ALL_KEY_DELETES, Op.DELETE, "all"),
    ]
    for names, op, positions in groups:
        for name in names.split():
            table[name.encode()] = (op, positions)
    return table


COMMANDS = _table()


class SpatialFilter:
    """``hash(key) mod P < R * P``: the same keys are in the sample every time (blake2b of the key bytes)."""

    def __init__(self, rate: float) -> None:
        if not 0 < rate <= 1:
            raise ValueError(f"sample rate must be in (0, 1], not {rate}")
        self.rate = rate
        self.threshold = round(rate * HASH_MODULUS)

    def __call__(self, key: bytes) -> bool:
        if self.threshold >= HASH_MODULUS:
            return True
        digest = hashlib.blake2b(key, digest_size=8).digest()
        return int.from_bytes(digest, "little") % HASH_MODULUS < self.threshold


class TraceCounts(BaseModel):
    """What the sampler saw: every key access (``seen_*``) and the sampled ones."""

    rate: float
    seen_commands: int
    seen_reads: int
    seen_writes: int
    seen_deletes: int
    sampled: int
    sampled_reads: int
    sampled_keys: int
    duration_s: float
    stopped_by: str


class Trace:
    """The sampled accesses in order, in parallel lists (a million of them stay cheap).

    ``stream_key_counts`` holds the access count of every key of the stream, sampled or not
    (the first ``MAX_COUNTED_KEYS`` keys): the popularity skew is fitted on them, and the
    curves weigh the sampled keys with them.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.keys: list[str] = []
        self.ops: list[Op] = []
        self.times: list[float] = []
        self.stream_key_counts: list[int] = []
        self.seen_commands = 0
        self.seen_reads = 0
        self.seen_writes = 0
        self.seen_deletes = 0
        self.stopped_by = "end"

    def __len__(self) -> int:
        return len(self.keys)

    def accesses(self) -> Iterator[Access]:
        return (Access(key, op, at) for key, op, at in zip(self.keys, self.ops, self.times, strict=True))

    @property
    def duration_s(self) -> float:
        return self.times[-1] - self.times[0] if self.times else 0.0

    def resampled(self, rate: float) -> Trace:
        """The sub-trace of the keys also in a sample at the lower ``rate`` (spatial samples are nested)."""
        if rate >= self.rate:
            return self
        keep = SpatialFilter(rate)
        decisions: dict[str, bool] = {}
        sub = Trace(rate)
        sub.seen_commands, sub.seen_reads = self.seen_commands, self.seen_reads
        sub.seen_writes, sub.seen_deletes, sub.stopped_by = self.seen_writes, self.seen_deletes, self.stopped_by
        sub.stream_key_counts = self.stream_key_counts
        for key, op, at in zip(self.keys, self.ops, self.times, strict=True):
            kept = decisions.get(key)
            if kept is None:
                kept = decisions[key] = keep(key.encode("utf-8", "surrogateescape"))
            if kept:
                sub.keys.append(key)
                sub.ops.append(op)
                sub.times.append(at)
        return sub

    def resampled_to(self, max_accesses: int) -> Trace:
        """This trace, or a spatial sub-sample of about ``max_accesses`` accesses when it is longer."""
        if len(self) <= max_accesses:
            return self
        return self.resampled(self.rate * max_accesses / len(self))

    def counts(self) -> TraceCounts:
        return TraceCounts(
            rate=self.rate,
            seen_commands=self.seen_commands,
            seen_reads=self.seen_reads,
            seen_writes=self.seen_writes,
            seen_deletes=self.seen_deletes,
            sampled=len(self.keys),
            sampled_reads=sum(1 for op in self.ops if op is Op.READ),
            sampled_keys=len(set(self.keys)),
            duration_s=round(self.duration_s, 3),
            stopped_by=self.stopped_by,
        )


class _TraceBuilder:
    """Adds accesses to a trace through the spatial filter, counting every access it is shown."""

    def __init__(self, rate: float, max_events: int) -> None:
        self.trace = Trace(rate)
        self.max_events = max_events
        self._in_sample = SpatialFilter(rate)
        self._seen: dict[bytes, list[int]] = {}  # key -> [in the sample (0/1), accesses]

    @property
    def full(self) -> bool:
        return len(self.trace.keys) >= self.max_events

    def finish(self) -> Trace:
        self.trace.stream_key_counts = [entry[1] for entry in self._seen.values()]
        return self.trace

    def add(self, key: bytes, op: Op, at: float) -> None:
        trace = self.trace
        entry = self._seen.get(key)
        if entry is None:
            entry = [int(self._in_sample(key)), 0]
            if len(self._seen) < MAX_COUNTED_KEYS:
                self._seen[key] = entry
        entry[1] += 1
        if entry[0] and len(trace.keys) < self.max_events:
            trace.keys.append(key.decode("utf-8", "surrogateescape"))
            trace.ops.append(op)
            trace.times.append(at)
        if op is Op.READ:
            trace.seen_reads += 1
        elif op is Op.WRITE:
            trace.seen_writes += 1
        else:
            trace.seen_deletes += 1

    def add_monitor_line(self, line: bytes) -> float | None:
        """One MONITOR line (``+1700000000.123456 [0 127.0.0.1:5555] "GET" "key"``); its server time."""
        start = line.find(b'] "')
        if start < 0 or not line.startswith(b"+"):
            return None
        self.trace.seen_commands += 1
        space = line.find(b" ")
        try:
            at = float(line[1:space])
        except ValueError:
            return None
        body = line[start + 3 :]
        end = body.find(b'"')
        spec = COMMANDS.get(body[:end].upper())
        if spec is None:
            return at
        op, positions = spec
        arguments = parse_quoted(body[end + 2 :], 1 if positions == "first" else None)
        keys = arguments[::2] if positions == "pairs" else arguments
        for key in keys:
            self.add(key, op, at)
        return at


_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("a"): b"\a", ord("b"): b"\b"}


def parse_quoted(text: bytes, limit: int | None = None) -> list[bytes]:
    """The arguments of a MONITOR line after the command: ``"a" "b\\"c" "\\x00"`` -> ``[b"a", b'b"c', b"\\x00"]``.

    Redis quotes every argument and escapes it like ``sdscatrepr``; ``limit`` stops after that many.
    """
    arguments: list[bytes] = []
    position = 0
    size = len(text)
    while position < size and (limit is None or len(arguments) < limit):
        if text[position] != 0x22:  # '"'
            position += 1
            continue
        close = text.find(b'"', position + 1)
        if close < 0:
            break
        if text.find(b"\\", position + 1, close) < 0:
            arguments.append(text[position + 1 : close])
            position = close + 1
            continue
        value, position = _unescape(text, position + 1)
        arguments.append(value)
    return arguments


def _unescape(text: bytes, position: int) -> tuple[bytes, int]:
    """The escaped argument starting at ``position`` and the position after its closing quote."""
    out = bytearray()
    size = len(text)
    while position < size:
        char = text[position]
        if char == 0x22:
            return bytes(out), position + 1
        if char == 0x5C and position + 1 < size:  # backslash
            following = text[position + 1]
            if following == ord("x") and position + 3 < size:
                with contextlib.suppress(ValueError):
                    out.append(int(text[position + 2 : position + 4], 16))
                    position += 4
                    continue
            out += _ESCAPES.get(following, bytes([following]))
            position += 2
            continue
        out.append(char)
        position += 1
    return bytes(out), position


def trace_from_keys(
    keys: Iterable[str],
    *,
    rate: float = 1.0,
    ops: Sequence[Op] | None = None,
    interval_s: float = 0.001,
    start: float = 0.0,
) -> Trace:
    """A trace of ``keys`` accessed in order (reads unless ``ops`` says otherwise), one every ``interval_s``."""
    builder = _TraceBuilder(rate, max_events=2**62)
    for index, key in enumerate(keys):
        builder.trace.seen_commands += 1
        op = ops[index] if ops is not None else Op.READ
        builder.add(key.encode("utf-8", "surrogateescape"), op, start + index * interval_s)
    return builder.finish()


class MonitorSampler:
    """Samples the live command stream of a Redis with ``MONITOR``, on a connection of its own.

    Use one sampler per window: ``trace = await MonitorSampler(client, rate=0.1).run(30)``;
    ``stop()`` (from another task) ends the window early. The MONITOR connection is closed
    when :meth:`run` returns, also on errors and cancellation.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        rate: float,
        max_events: int = 1_000_000,
        max_lag_s: float = 10.0,
    ) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self._client = client
        self._builder = _TraceBuilder(rate, max_events)
        self._max_lag_s = max_lag_s
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, window_s: float) -> Trace:
        """Sample for ``window_s`` seconds at most; the trace (also when stopped early)."""
        connection = self._client.connection_pool.make_connection()
        try:
            await connection.connect()
            await connection.send_command("MONITOR")
            reader = connection._reader
            assert reader is not None, "a connected redis-py connection has a stream reader"
            self._builder.trace.stopped_by = await self._read(reader, window_s)
        finally:
            with contextlib.suppress(Exception):
                await connection.disconnect()
        return self._builder.finish()

    async def _read(self, reader: asyncio.StreamReader, window_s: float) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window_s
        stopping = asyncio.ensure_future(self._stop.wait())
        pending = b""
        acknowledged = False
        offset: float | None = None  # local clock minus server clock, from the first event
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return "window"
                reading = asyncio.ensure_future(reader.read(READ_CHUNK_BYTES))
                done, _ = await asyncio.wait({reading, stopping}, timeout=remaining, return_when="FIRST_COMPLETED")
                if reading not in done:
                    reading.cancel()
                    return "stopped" if stopping in done else "window"
                chunk = reading.result()
                if not chunk:
                    raise ConnectionError("the server closed the MONITOR connection")
                lines = (pending + chunk).split(b"\r\n")
                pending = lines.pop()
                if not acknowledged and lines:
                    acknowledged = True
                    first = lines.pop(0)
                    if first.startswith(b"-"):
                        raise aioredis.ResponseError(first[1:].decode(errors="replace"))
                last = self._add_lines(lines)
                if self._builder.full:
                    return "max_events"
                if last is not None:
                    offset = time.time() - last if offset is None else offset
                    if time.time() - offset - last > self._max_lag_s:
                        return "lag"
        finally:
            stopping.cancel()

    def _add_lines(self, lines: list[bytes]) -> float | None:
        last = None
        add = self._builder.add_monitor_line
        for line in lines:
            at = add(line)
            if at is not None:
                last = at
        return last
