"""Replay a traffic trace against the demo workload, open loop, and report what happened.

A trace is a CSV of request rates over time: ``timestamp,value`` (NAB's layout; the step
between rows comes from the timestamps) or one ``value``/``rps`` column with a given step.
The replay compresses time (``compress=144`` plays a day in 10 minutes), scales the rates
(the trace's maximum becomes ``peak_rps``, or every value times ``scale``), and sends
requests at Poisson arrival times at the current rate, interpolated between rows. It never
waits for a response before sending the next request; above ``max_in_flight`` outstanding
requests it drops arrivals and counts them as ``client_overload`` errors.

Latency is measured from each request's scheduled arrival time, so a slow client or a
queue in front of the server is counted, not hidden.
"""

from __future__ import annotations

import asyncio
import bisect
import csv
import io
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydantic import BaseModel, Field

from tmsops.errors import DataError, PermanentError

VALUE_COLUMNS = ("value", "rps")
TIME_COLUMN = "timestamp"
ROUTES = ("get", "list", "post")
CLIENT_OVERLOAD = "client_overload"
SHARD_SIZE = 8

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Trace:
    """Request rates over time: ``offsets_s[i]`` seconds after the first row, the rate was ``values[i]``."""

    source: str
    offsets_s: tuple[float, ...]
    values: tuple[float, ...]

    @property
    def duration_s(self) -> float:
        return self.offsets_s[-1]


def read_trace(path: Path | str, step_s: float | None = None) -> Trace:
    """Read a ``timestamp,value`` CSV, or a single ``value``/``rps`` column with rows ``step_s`` apart.

    With a timestamp column ``step_s`` is not used. Raises DataError naming the file (and the row).
    """
    source = str(path)
    reader = csv.reader(io.StringIO(_read_text(Path(path))))
    header = next(reader, None)
    if header is None:
        raise DataError(source, "the file is empty")
    value_at, time_at = _columns(source, header, step_s)
    offsets: list[float] = []
    values: list[float] = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        where = f"row {reader.line_num}"
        values.append(_rate(source, where, _cell(source, where, row, value_at)))
        offset = _offset(source, where, row, time_at) if time_at is not None else len(offsets) * (step_s or 0.0)
        if offsets and offset <= offsets[-1]:
            raise DataError(source, f"{where}: the timestamp is not after the previous row's")
        offsets.append(offset)
    if len(values) < 2:
        raise DataError(source, f"{len(values)} data row(s): a trace needs at least 2")
    return Trace(source, tuple(offset - offsets[0] for offset in offsets), tuple(values))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise DataError(str(path), f"cannot read the trace: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise DataError(str(path), f"not a text file: {error}") from error


def _columns(source: str, header: Sequence[str], step_s: float | None) -> tuple[int, int | None]:
    """Indexes of the value column and of the timestamp column (None when there is none)."""
    names = [name.strip().lower() for name in header]
    value_at = next((names.index(name) for name in VALUE_COLUMNS if name in names), None)
    if value_at is None:
        raise DataError(source, f"missing column: expected 'value' or 'rps' in the header, found {names}")
    time_at = names.index(TIME_COLUMN) if TIME_COLUMN in names else None
    if time_at is None and (step_s is None or not step_s > 0):
        raise DataError(source, "no 'timestamp' column: give the step between rows in seconds (--step)")
    return value_at, time_at


def _cell(source: str, where: str, row: Sequence[str], index: int) -> str:
    if index >= len(row) or not row[index].strip():
        raise DataError(source, f"{where}: the cell is empty")
    return row[index].strip()


def _rate(source: str, where: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(source, f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise DataError(source, f"{where}: {text} is not a rate (a finite number >= 0)")
    return value


def _offset(source: str, where: str, row: Sequence[str], index: int) -> float:
    """A timestamp (ISO 8601, or seconds since the epoch) as seconds since the epoch."""
    text = _cell(source, where, row, index)
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise DataError(source, f"{where}: {text!r} is not a timestamp") from None


@dataclass(frozen=True)
class RateSchedule:
    """The target request rate over the replay: ``rates[i]`` req/s at ``times_s[i]``, linear in between."""

    times_s: tuple[float, ...]
    rates: tuple[float, ...]
    duration_s: float
    factor: float = 1.0

    @property
    def max_rate(self) -> float:
        return max(self.rates)

    def rate_at(self, t: float) -> float:
        """The rate at ``t`` seconds, interpolated between rows (held after the last)."""
        times = self.times_s
        if t <= times[0]:
            return self.rates[0]
        right = bisect.bisect_right(times, t)
        if right >= len(times):
            return self.rates[-1]
        left = right - 1
        share = (t - times[left]) / (times[right] - times[left])
        return self.rates[left] + share * (self.rates[right] - self.rates[left])

    def expected_requests(self) -> float:
        """The number of requests the schedule asks for: the integral of the rate over the replay."""
        points = [t for t in self.times_s if t < self.duration_s] + [self.duration_s]
        rates = [self.rate_at(t) for t in points]
        pairs = zip(points, points[1:], rates, rates[1:], strict=False)
        return float(sum((b - a) * (ra + rb) / 2 for a, b, ra, rb in pairs))


def rate_schedule(
    trace: Trace,
    *,
    compress: float = 1.0,
    peak_rps: float | None = None,
    scale: float | None = None,
    max_duration_s: float | None = None,
) -> RateSchedule:
    """The trace compressed ``compress`` times, scaled to ``peak_rps`` (or by ``scale``), cut at ``max_duration_s``."""
    if not compress > 0:
        raise PermanentError(f"compress must be above 0, not {compress}")
    if max_duration_s is not None and not max_duration_s > 0:
        raise PermanentError(f"the duration must be above 0 s, not {max_duration_s}")
    factor = scale_factor(trace, peak_rps, scale)
    times = tuple(offset / compress for offset in trace.offsets_s)
    duration = times[-1] if max_duration_s is None else min(times[-1], max_duration_s)
    return RateSchedule(times, tuple(value * factor for value in trace.values), duration, factor)


def scale_factor(trace: Trace, peak_rps: float | None, scale: float | None) -> float:
    """Requests per second per trace unit: ``peak_rps / max(trace)``, or ``scale``, or 1."""
    if peak_rps is not None and scale is not None:
        raise PermanentError("give a peak rate or a scale factor, not both")
    if scale is not None:
        if not scale > 0:
            raise PermanentError(f"the scale factor must be above 0, not {scale}")
        return scale
    if peak_rps is None:
        return 1.0
    if not peak_rps > 0:
        raise PermanentError(f"the peak rate must be above 0 req/s, not {peak_rps}")
    peak = max(trace.values)
    if peak <= 0:
        raise DataError(trace.source, "every value is 0: there is no peak to scale")
    return peak_rps / peak


def arrival_times(schedule: RateSchedule, rng: random.Random) -> Iterator[float]:
    """Poisson arrival times (s) at the schedule's varying rate, by thinning a process at its peak rate."""
    peak = schedule.max_rate
    if peak <= 0:
        return
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= schedule.duration_s:
            return
        if rng.random() * peak < schedule.rate_at(t):
            yield t


class RouteMix(BaseModel):
    """Relative weights of the routes: GET /api/shipments/{id}, GET /api/customers/{cid}/shipments, POST."""

    get: float = Field(70.0, ge=0)
    list: float = Field(20.0, ge=0)
    post: float = Field(10.0, ge=0)

    @classmethod
    def parse(cls, text: str) -> RouteMix:
        """``"get=70,list=20,post=10"``; a route left out has weight 0."""
        weights: dict[str, float] = dict.fromkeys(ROUTES, 0.0)
        for part in filter(None, (item.strip() for item in text.split(","))):
            name, _, number = part.partition("=")
            if name.strip() not in ROUTES:
                raise PermanentError(f"route mix {text!r}: unknown route {name.strip()!r} (known: {', '.join(ROUTES)})")
            try:
                weights[name.strip()] = float(number)
            except ValueError:
                raise PermanentError(f"route mix {text!r}: {number!r} is not a weight") from None
        mix = cls(**weights)
        if mix.total() <= 0:
            raise PermanentError(f"route mix {text!r}: the weights add up to nothing")
        return mix

    def total(self) -> float:
        return self.get + self.list + self.post


@dataclass(frozen=True)
class PlannedRequest:
    route: str
    method: str
    path: str
    body: dict[str, Any] | None = None


def plan_request(rng: random.Random, mix: RouteMix, max_id: int, customers: int) -> PlannedRequest:
    """One request drawn from the route mix, with a random shipment id or customer."""
    route = rng.choices(ROUTES, weights=(mix.get, mix.list, mix.post))[0]
    if route == "get":
        return PlannedRequest(route, "GET", f"/api/shipments/{rng.randint(1, max_id)}")
    if route == "list":
        return PlannedRequest(route, "GET", f"/api/customers/{rng.randint(1, customers)}/shipments")
    body = {
        "customer_id": rng.randint(1, customers),
        "origin": "Rotterdam",
        "destination": rng.choice(("Berlin", "Paris", "Milan", "Warsaw")),
        "weight_kg": round(rng.uniform(0.5, 500), 2),
    }
    return PlannedRequest(route, "POST", "/api/shipments", body)


@dataclass(slots=True)
class Sample:
    """One request: when it was due (s into the replay), how long it took, and how it ended."""

    route: str
    sent_s: float
    latency_ms: float | None
    status: int | None
    error: str | None


class ReplayOptions(BaseModel):
    """How to send: route mix, id ranges, client limits, randomness, progress cadence."""

    mix: RouteMix = RouteMix()
    max_id: int = Field(20000, ge=1)
    customers: int = Field(1000, ge=1)
    connections: int = Field(64, ge=1)
    max_in_flight: int = Field(512, ge=1)
    timeout_s: float = Field(10.0, gt=0)
    seed: int | None = None
    progress_every_s: float = Field(5.0, gt=0)


class TimelinePoint(BaseModel):
    """One second of the replay, by the requests due in it."""

    second: int
    target_rps: float
    sent: int
    ok: int
    errors: int
    p95_ms: float | None


class ReplayReport(BaseModel):
    """What a replay did. Latencies cover every request that was sent (not those dropped by the client)."""

    url: str
    trace: str
    rate_factor: float
    duration_s: float
    interrupted: bool = False
    target_requests: float
    requests: int
    requests_by_route: dict[str, int]
    ok: int
    errors: int
    error_pct: float
    errors_by_kind: dict[str, int]
    achieved_rps: float
    ok_rps: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    timeline: list[TimelinePoint]


def percentiles(values: Sequence[float], quantiles: Sequence[float]) -> list[float | None]:
    """Linear-interpolation percentiles (numpy's default) of ``values``; None for no values."""
    if not values:
        return [None for _ in quantiles]
    return [float(value) for value in np.percentile(np.asarray(values, dtype=float), list(quantiles))]


def build_report(
    samples: Sequence[Sample],
    schedule: RateSchedule,
    *,
    url: str,
    trace: str,
    duration_s: float,
    interrupted: bool = False,
) -> ReplayReport:
    """The report of a replay from its samples."""
    latencies = [sample.latency_ms for sample in samples if sample.latency_ms is not None]
    p50, p95, p99 = percentiles(latencies, (50, 95, 99))
    errors = Counter(sample.error for sample in samples if sample.error)
    error_count = sum(errors.values())
    sent = sum(1 for sample in samples if sample.error != CLIENT_OVERLOAD)
    span = max(duration_s, 1e-9)
    return ReplayReport(
        url=url,
        trace=trace,
        rate_factor=schedule.factor,
        duration_s=round(duration_s, 3),
        interrupted=interrupted,
        target_requests=round(schedule.expected_requests(), 1),
        requests=len(samples),
        requests_by_route=dict(Counter(sample.route for sample in samples)),
        ok=len(samples) - error_count,
        errors=error_count,
        error_pct=100.0 * error_count / len(samples) if samples else 0.0,
        errors_by_kind=dict(errors.most_common()),
        achieved_rps=sent / span,
        ok_rps=(len(samples) - error_count) / span,
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        latency_p99_ms=p99,
        latency_max_ms=max(latencies) if latencies else None,
        timeline=timeline(samples, schedule, duration_s),
    )


def timeline(samples: Sequence[Sample], schedule: RateSchedule, duration_s: float) -> list[TimelinePoint]:
    """Per second of the replay: target rate, requests due, ok, errors and p95 latency."""
    seconds = max(1, math.ceil(duration_s))
    buckets: list[list[Sample]] = [[] for _ in range(seconds)]
    for sample in samples:
        buckets[min(int(sample.sent_s), seconds - 1)].append(sample)
    return [_point(second, bucket, schedule) for second, bucket in enumerate(buckets)]


def _point(second: int, bucket: Sequence[Sample], schedule: RateSchedule) -> TimelinePoint:
    errors = sum(1 for sample in bucket if sample.error)
    latencies = [sample.latency_ms for sample in bucket if sample.latency_ms is not None]
    (p95,) = percentiles(latencies, (95,))
    return TimelinePoint(
        second=second,
        target_rps=round(schedule.rate_at(second + 0.5), 3),
        sent=len(bucket),
        ok=len(bucket) - errors,
        errors=errors,
        p95_ms=p95,
    )


def error_kind(error: httpx.HTTPError) -> str:
    """A short name for a failed request: timeout, connect or transport."""
    if isinstance(error, httpx.TimeoutException):
        return "timeout"
    if isinstance(error, httpx.ConnectError):
        return "connect"
    return "transport"


class Connections:
    """``count`` keep-alive connections to ``url``, spread over small httpx clients of ``SHARD_SIZE`` at most.

    httpx's pool checks every connection it holds (and every request queued in it) on each request,
    so one big pool makes the client itself the bottleneck at a few hundred req/s. Here a request
    takes a free connection slot from a FIFO queue (waiting there when all are busy), so no httpx
    pool holds more than a few connections or ever queues.
    """

    def __init__(
        self, url: str, count: int, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        sizes = [SHARD_SIZE] * (count // SHARD_SIZE) + ([count % SHARD_SIZE] if count % SHARD_SIZE else [])
        self.clients = [_client(url, size, timeout_s, transport) for size in sizes]
        self._free: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
        for client, size in zip(self.clients, sizes, strict=True):
            for _ in range(size):
                self._free.put_nowait(client)

    async def request(self, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        """Send one request on the next free connection."""
        client = await self._free.get()
        try:
            return await client.request(method, path, json=body)
        finally:
            self._free.put_nowait(client)

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


def _client(url: str, size: int, timeout_s: float, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s, transport=transport, trust_env=False)


class Replayer:
    """Sends the planned requests at their arrival times without waiting for answers; keeps the samples."""

    def __init__(self, connections: Connections, options: ReplayOptions, rng: random.Random) -> None:
        self.connections = connections
        self.options = options
        self.rng = rng
        self.samples: list[Sample] = []
        self.in_flight: set[asyncio.Task[None]] = set()
        self.start = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    async def send_all(self, schedule: RateSchedule) -> None:
        """Launch every arrival at its time, then wait out the schedule's duration."""
        self.start = time.perf_counter()
        for due in arrival_times(schedule, self.rng):
            delay = due - self.elapsed()
            if delay > 0:
                await asyncio.sleep(delay)
            self.launch(due)
        await asyncio.sleep(max(0.0, schedule.duration_s - self.elapsed()))

    def launch(self, due: float) -> None:
        """Start one request, or count it as ``client_overload`` when too many are outstanding."""
        options = self.options
        planned = plan_request(self.rng, options.mix, options.max_id, options.customers)
        if len(self.in_flight) >= options.max_in_flight:
            self.samples.append(Sample(planned.route, due, None, None, CLIENT_OVERLOAD))
            return
        task = asyncio.create_task(self.send(planned, due))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    async def send(self, planned: PlannedRequest, due: float) -> None:
        """Send one request and record its sample; latency counts from when it was due."""
        status: int | None = None
        try:
            response = await self.connections.request(planned.method, planned.path, planned.body)
            status = response.status_code
            error = None if status < 400 else f"http_{status}"
        except httpx.HTTPError as failure:
            error = error_kind(failure)
        latency_ms = (self.elapsed() - due) * 1000
        self.samples.append(Sample(planned.route, due, latency_ms, status, error))

    async def drain(self) -> None:
        """Wait for the requests still outstanding (each bounded by the timeout once it has a connection)."""
        if self.in_flight:
            await asyncio.gather(*self.in_flight, return_exceptions=True)

    def cancel(self) -> None:
        for task in self.in_flight:
            task.cancel()

    async def report_progress(self, schedule: RateSchedule, progress: Progress) -> None:
        """Every ``progress_every_s``: elapsed time, rate sent since last time, target rate, errors."""
        every = self.options.progress_every_s
        seen = 0
        while True:
            await asyncio.sleep(every)
            samples = self.samples
            count = len(samples)
            errors = sum(1 for sample in samples if sample.error)
            elapsed = self.elapsed()
            progress(
                f"[{elapsed:7.1f} s] {(count - seen) / every:7.1f} req/s done (target {schedule.rate_at(elapsed):.1f}),"
                f" errors {errors} ({100 * errors / max(count, 1):.1f}%), in flight {len(self.in_flight)}"
            )
            seen = count


async def replay(
    schedule: RateSchedule,
    url: str,
    options: ReplayOptions | None = None,
    *,
    trace: str = "",
    progress: Progress | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ReplayReport:
    """Replay ``schedule`` against ``url`` and report; cancelled (Ctrl-C), it reports what was done as interrupted."""
    options = options or ReplayOptions()
    connections = Connections(url, options.connections, options.timeout_s, transport)
    replayer = Replayer(connections, options, random.Random(options.seed))
    try:
        ticker = asyncio.create_task(replayer.report_progress(schedule, progress)) if progress else None
        interrupted = await _send_or_interrupt(replayer, schedule)
        duration = replayer.elapsed() if interrupted else schedule.duration_s
        if ticker:
            ticker.cancel()
        if interrupted:
            replayer.cancel()
        await replayer.drain()
    finally:
        await connections.aclose()
    return build_report(replayer.samples, schedule, url=url, trace=trace, duration_s=duration, interrupted=interrupted)


async def _send_or_interrupt(replayer: Replayer, schedule: RateSchedule) -> bool:
    """Run the sender; True when it was cancelled, the cancellation absorbed so a report can follow."""
    try:
        await replayer.send_all(schedule)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()
        return True
    return False


def run_replay(
    schedule: RateSchedule,
    url: str,
    options: ReplayOptions | None = None,
    *,
    trace: str = "",
    progress: Progress | None = None,
) -> ReplayReport:
    """:func:`replay` on a new event loop."""
    return asyncio.run(replay(schedule, url, options, trace=trace, progress=progress))


def write_timeline(report: ReplayReport, path: Path) -> None:
    """The report's per-second timeline as CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(TimelinePoint.model_fields)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        for point in report.timeline:
            writer.writerow(point.model_dump())


def summary(report: ReplayReport) -> str:
    """The report as a few readable lines."""
    errors = ", ".join(f"{kind} {count}" for kind, count in report.errors_by_kind.items()) or "none"
    latency = ", ".join(
        f"{name} {_ms(value)}"
        for name, value in (
            ("p50", report.latency_p50_ms),
            ("p95", report.latency_p95_ms),
            ("p99", report.latency_p99_ms),
            ("max", report.latency_max_ms),
        )
    )
    state = " (interrupted)" if report.interrupted else ""
    return "\n".join(
        [
            f"replay of {report.trace or 'a trace'} against {report.url}: {report.duration_s:.1f} s{state}",
            f"requests  {report.requests} (target {report.target_requests:.0f}), sent {report.achieved_rps:.1f} req/s,"
            f" ok {report.ok_rps:.1f} req/s",
            f"errors    {report.errors} ({report.error_pct:.2f}%): {errors}",
            f"latency   {latency}",
        ]
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"
