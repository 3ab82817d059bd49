"""Model server throughput and latency: our BentoML server against ``mlflow models serve``.

Usage (from the repository root, after ``make run`` has registered the champion models)::

    .venv/bin/python bench/serving.py                 # full run, about 3.5 minutes on 2 cores
    .venv/bin/python bench/serving.py --quick         # smoke run (2 s cells), about 2 minutes
    .venv/bin/python bench/serving.py --tracking-uri sqlite:////path/to/mlflow.db --duration 5

Both servers are started as real processes on the same champion forecaster
(``models:/load-forecaster@champion``), each with one worker, and are driven one at a
time over real HTTP (``httpx.AsyncClient``, keep-alive) at concurrency 1, 8 and 32 with
1-series and 64-series requests, then once more with 1-series requests at concurrency 1
(``c1_series1_after_load``: adaptive batching remembers the load it has seen). Each
series carries the last ``context`` points of a generated service trace. Every response
must be a 200 of the right shape (otherwise it counts as an error). Prints one JSON
object: per server and cell p50/p99 latency, requests/s, series/s, errors and the CPU
seconds the client and the server used; a ``summary`` with the issue's goals; the
machine and the model version. Both servers are stopped at the end, also on Ctrl-C or
an error (each runs in its own process group). Exit status 2: no champion model, or a
server that did not start. Server logs are kept in the directory printed under ``logs``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AsyncExitStack, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from support.model_server import free_port, stop  # noqa: E402
from support.model_server import start as start_bentoml  # noqa: E402

MODEL_NAME = "load-forecaster"
ALIAS = "champion"
MLFLOW = Path(sys.executable).parent / "mlflow"
STEP_S = 300
START_TIMEOUT_S = 300.0
BODIES_PER_CELL = 16


class BenchError(Exception):
    """The bench cannot run (no champion model, a server that does not start)."""


@dataclass(frozen=True)
class Options:
    tracking_uri: str
    duration_s: float
    warmup_s: float
    concurrencies: tuple[int, ...]
    sizes: tuple[int, ...]
    log_dir: Path


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    context: int
    horizon: int


@dataclass(frozen=True)
class Window:
    id: str
    start: np.datetime64
    values: np.ndarray


Check = Callable[[Any, Sequence[Window], ModelSpec], str | None]


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    encode: Callable[[Sequence[Window], ModelSpec], bytes]
    check: Check
    pid: int


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


# ---------------------------------------------------------------- options and model


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlruns/mlflow.db"))
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per cell (default 8)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each cell (default 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s cells, 0.5 s warm-up")
    parser.add_argument("--log-dir", type=Path, default=None, help="where the server logs go (default: a temp dir)")
    args = parser.parse_args(argv)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="bench-serving-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    return Options(
        tracking_uri=absolute_uri(args.tracking_uri),
        duration_s=2.0 if args.quick else args.duration,
        warmup_s=0.5 if args.quick else args.warmup,
        concurrencies=(1, 8, 32),
        sizes=(1, 64),
        log_dir=log_dir.resolve(),
    )


def absolute_uri(uri: str) -> str:
    """``sqlite:///relative.db`` resolved against the repository, so both servers read the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((REPO / uri.removeprefix(prefix)).resolve())
    return uri


def champion(tracking_uri: str) -> ModelSpec:
    """The champion forecaster's version, context and horizon; BenchError if there is none."""
    import mlflow

    _require_store(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        version = str(client.get_model_version_by_alias(MODEL_NAME, ALIAS).version)
    except mlflow.exceptions.MlflowException as error:
        raise BenchError(
            f"no models:/{MODEL_NAME}@{ALIAS} in {tracking_uri} ({str(error).splitlines()[0]}); "
            "run `make run` first, or pass --tracking-uri"
        ) from error
    config = json.loads(Path(_config_file(tracking_uri, version)).read_text())
    return ModelSpec(MODEL_NAME, version, int(config["context"]), int(config["horizon"]))


def _require_store(tracking_uri: str) -> None:
    """A missing SQLite file is an error here, not a new empty store (which MLflow would create)."""
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    if tracking_uri.startswith("sqlite:///") and not path.is_file():
        raise BenchError(f"no MLflow store at {path}; run `make run` first, or pass --tracking-uri")


def _config_file(tracking_uri: str, version: str) -> str:
    """The forecaster's ``config.json``, found through the pyfunc flavor's artifact table in ``MLmodel``."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}/{version}"))
    flavor = mlflow.models.Model.load(local / "MLmodel").flavors["python_function"]
    return str(local / flavor["artifacts"]["forecaster"]["path"] / "config.json")


# ---------------------------------------------------------------- request bodies


def windows(context: int, count: int) -> list[Window]:
    """``count`` windows of ``context`` points, cut from the generator's service traces at several ends."""
    from training.generate import GeneratorConfig, generate_traces

    traces = generate_traces(GeneratorConfig())
    cut: list[Window] = []
    for index in range(count):
        trace = traces[index % len(traces)]
        end = len(trace) - 7 * (index // len(traces))
        values = np.round(trace.values[end - context : end], 3)
        cut.append(Window(f"{trace.key}#{index}", trace.timestamps[end - context], values))
    return cut


def bentoml_body(batch: Sequence[Window], spec: ModelSpec) -> bytes:
    series = [
        {
            "id": item.id,
            "values": item.values.tolist(),
            "start": str(np.datetime_as_string(item.start, unit="s")),
            "step_s": STEP_S,
            "horizon": spec.horizon,
        }
        for item in batch
    ]
    return json.dumps({"series": series}).encode()


def mlflow_body(batch: Sequence[Window], spec: ModelSpec) -> bytes:
    rows: list[list[Any]] = []
    for item in batch:
        stamps = item.start + np.arange(len(item.values)) * np.timedelta64(STEP_S, "s")
        texts = np.datetime_as_string(stamps, unit="s").tolist()
        rows += [[item.id, stamp, value] for stamp, value in zip(texts, item.values.tolist(), strict=True)]
    return json.dumps({"dataframe_split": {"columns": ["series_id", "timestamp", "value"], "data": rows}}).encode()


def request_bodies(
    target: Target, pool: Sequence[Window], size: int, spec: ModelSpec
) -> list[tuple[bytes, list[Window]]]:
    """A few different requests of ``size`` series each, sent in turn."""
    bodies = []
    for index in range(BODIES_PER_CELL):
        batch = [pool[(index * size + k) % len(pool)] for k in range(size)]
        bodies.append((target.encode(batch, spec), batch))
    return bodies


# ---------------------------------------------------------------- response checks


def check_bentoml(payload: Any, batch: Sequence[Window], spec: ModelSpec) -> str | None:
    if not isinstance(payload, list) or len(payload) != len(batch):
        return "wrong_count"
    for item, sent in zip(payload, batch, strict=True):
        if item.get("id") != sent.id or item.get("version") != spec.version:
            return "wrong_id_or_version"
        if any(not _finite_row(item.get(key), spec.horizon) for key in ("p10", "p50", "p90")):
            return "wrong_shape"
        if len(item.get("timestamps") or ()) != spec.horizon:
            return "wrong_timestamps"
    return None


def check_mlflow(payload: Any, batch: Sequence[Window], spec: ModelSpec) -> str | None:
    rows = payload.get("predictions") if isinstance(payload, dict) else None
    if not isinstance(rows, list) or len(rows) != len(batch) * spec.horizon:
        return "wrong_count"
    if [row.get("series_id") for row in rows[:: spec.horizon]] != [item.id for item in batch]:
        return "wrong_id"
    columns = [[row.get(key) for row in rows] for key in ("p10", "p50", "p90")]
    return None if all(_finite_row(column, len(rows)) for column in columns) else "wrong_shape"


def _finite_row(values: Any, length: int) -> bool:
    return isinstance(values, list) and len(values) == length and all(_finite(value) for value in values)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


# ---------------------------------------------------------------- driving a server


async def send(
    client: httpx.AsyncClient, target: Target, body: bytes, batch: Sequence[Window], spec: ModelSpec
) -> str | None:
    """One request; None if it was a 200 of the right shape, else what went wrong."""
    try:
        response = await client.post(target.url, content=body, headers={"content-type": "application/json"})
    except httpx.HTTPError as error:
        return type(error).__name__
    if response.status_code != 200:
        return f"http_{response.status_code}"
    try:
        return target.check(response.json(), batch, spec)
    except ValueError:
        return "bad_json"


async def drive(
    clients: Sequence[httpx.AsyncClient],
    target: Target,
    bodies: Sequence[tuple[bytes, list[Window]]],
    spec: ModelSpec,
    concurrency: int,
    duration_s: float,
) -> Tally:
    """``concurrency`` users, each with its own keep-alive client, send requests back to back for ``duration_s``.

    One ``httpx.AsyncClient`` per user, not one shared: a shared client's connection pool costs
    about three times the client CPU per request at concurrency 32 (encode/httpx#3215), and on
    two cores the client's CPU is taken from the server under test.
    """
    tally = Tally()
    deadline = time.perf_counter() + duration_s

    async def one_client(turn: int) -> None:
        client = clients[turn]
        while time.perf_counter() < deadline:
            body, batch = bodies[turn % len(bodies)]
            turn += concurrency
            started = time.perf_counter()
            problem = await send(client, target, body, batch, spec)
            if problem is None:
                tally.latencies.append(time.perf_counter() - started)
            else:
                tally.errors[problem] += 1

    await asyncio.gather(*(one_client(turn) for turn in range(concurrency)))
    return tally


async def measure_cell(
    clients: Sequence[httpx.AsyncClient],
    target: Target,
    bodies: list[tuple[bytes, list[Window]]],
    spec: ModelSpec,
    concurrency: int,
    options: Options,
) -> dict[str, Any]:
    await drive(clients, target, bodies, spec, concurrency, options.warmup_s)
    server_cpu, client_cpu, started = cpu_seconds(target.pid), time.process_time(), time.perf_counter()
    tally = await drive(clients, target, bodies, spec, concurrency, options.duration_s)
    wall = time.perf_counter() - started
    cell = cell_stats(tally, wall, len(bodies[0][1]))
    cell["client_cpu_s"] = round(time.process_time() - client_cpu, 2)
    cell["server_cpu_s"] = round(cpu_seconds(target.pid) - server_cpu, 2)
    return cell


def cell_stats(tally: Tally, wall_s: float, size: int) -> dict[str, Any]:
    latencies = np.array(tally.latencies) * 1000.0
    ok = len(latencies)
    return {
        "requests": ok + sum(tally.errors.values()),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2) if ok else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 2) if ok else None,
        "requests_per_s": round(ok / wall_s, 1),
        "series_per_s": round(ok * size / wall_s, 1),
        "errors": sum(tally.errors.values()),
        "error_kinds": dict(tally.errors),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (the server's workers)."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            times = process.cpu_times()
            total += times.user + times.system
    except psutil.Error:
        pass
    return total


def cell_plan(options: Options) -> list[tuple[str, int, int]]:
    """(name, series per request, concurrency) in run order; the 1-series c1 cell again at the end, after load."""
    plan = [(f"c{c}_series{n}", n, c) for n in options.sizes for c in options.concurrencies]
    return [*plan, ("c1_series1_after_load", 1, 1)]


async def run_cells(targets: Sequence[Target], spec: ModelSpec, options: Options) -> dict[str, Any]:
    """The agreement check, then every cell on every server; the servers take turns (who goes first alternates)."""
    pool = windows(spec.context, BODIES_PER_CELL * max(options.sizes))
    results: dict[str, dict[str, Any]] = {target.name: {} for target in targets}
    async with AsyncExitStack() as stack:
        users = max(options.concurrencies)
        clients = [await stack.enter_async_context(httpx.AsyncClient(timeout=120.0)) for _ in range(users)]
        checked = await agreement(clients[0], targets, pool[:64], spec)
        for turn, (name, size, concurrency) in enumerate(cell_plan(options)):
            for target in [*targets[turn % 2 :], *targets[: turn % 2]]:
                bodies = request_bodies(target, pool, size, spec)
                cell = await measure_cell(clients, target, bodies, spec, concurrency, options)
                progress(f"{target.name} {name}: {cell}")
                results[target.name][name] = cell
    return {"agreement": checked, "servers": results}


async def agreement(
    client: httpx.AsyncClient, targets: Sequence[Target], batch: list[Window], spec: ModelSpec
) -> dict[str, Any]:
    """Both servers answer the same 64 series: the largest difference between their p50 forecasts."""
    medians = []
    for target in targets:
        response = await client.post(
            target.url, content=target.encode(batch, spec), headers={"content-type": "application/json"}
        )
        response.raise_for_status()
        payload = response.json()
        if problem := target.check(payload, batch, spec):
            raise BenchError(f"{target.name} answered a correct request wrongly: {problem}")
        rows = payload if isinstance(payload, list) else payload["predictions"]
        medians.append(np.array([row["p50"] for row in rows], dtype=np.float64).reshape(len(batch), -1))
    return {"series": len(batch), "p50_max_abs_diff": float(np.max(np.abs(medians[0] - medians[1])))}


# ---------------------------------------------------------------- server processes


def start_mlflow(tracking_uri: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [
        str(MLFLOW),
        "models",
        "serve",
        "-m",
        f"models:/{MODEL_NAME}@{ALIAS}",
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "-p",
        str(port),
        "--workers",
        "1",
    ]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{MLFLOW.parent}{os.pathsep}{os.environ['PATH']}",
    }
    with log.open("ab") as sink:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_ready(name: str, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{name} exited with {process.returncode} before it was ready; see {log}:\n{_tail(log)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise BenchError(f"{name} was not ready within {START_TIMEOUT_S:.0f} s; see {log}:\n{_tail(log)}")


def _tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


@contextmanager
def servers(options: Options) -> Iterator[list[Target]]:
    """Both servers started at once, ready, and stopped (whole process groups) however the block ends."""
    bento_port, mlflow_port = free_port(), free_port()
    bento_log, mlflow_log = options.log_dir / "bentoml.log", options.log_dir / "mlflow.log"
    with ExitStack() as stack:
        # the poller off: mlflow serve also loads the champion once, so both serve the same version throughout
        bento = start_bentoml(options.tracking_uri, bento_port, bento_log, reload_interval_s="0")
        stack.callback(stop, bento)
        mlflow = start_mlflow(options.tracking_uri, mlflow_port, mlflow_log)
        stack.callback(stop, mlflow)
        wait_ready("bentoml serve", f"http://127.0.0.1:{bento_port}/readyz", bento, bento_log)
        wait_ready("mlflow models serve", f"http://127.0.0.1:{mlflow_port}/ping", mlflow, mlflow_log)
        yield [
            Target("bentoml", f"http://127.0.0.1:{bento_port}/forecast", bentoml_body, check_bentoml, bento.pid),
            Target("mlflow", f"http://127.0.0.1:{mlflow_port}/invocations", mlflow_body, check_mlflow, mlflow.pid),
        ]


def served_version(target: Target) -> str | None:
    """The forecaster version our server reports on ``/model-info``."""
    info = httpx.get(target.url.removesuffix("/forecast") + "/model-info", timeout=10).json()
    return next((str(item["version"]) for item in info.get("models", []) if item.get("name") == MODEL_NAME), None)


# ---------------------------------------------------------------- report


def summary(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ours, peer = results["bentoml"], results["mlflow"]
    p99 = ours["c1_series1"]["p99_ms"]
    rate, peer_rate = ours["c32_series64"]["series_per_s"], peer["c32_series64"]["series_per_s"]
    speedup = round(rate / peer_rate, 2) if peer_rate else None
    return {
        "forecast_p99_ms_c1": p99,
        "forecast_p99_ms_c1_after_load": ours["c1_series1_after_load"]["p99_ms"],
        "series_per_s_c32": rate,
        "mlflow_series_per_s_c32": peer_rate,
        "speedup_c32": speedup,
        "goal_p99_under_25ms": p99 is not None and p99 < 25.0,
        "goal_speedup_at_least_3": speedup is not None and speedup >= 3.0,
        "errors_total": sum(cell["errors"] for server in (ours, peer) for cell in server.values()),
    }


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "load_avg_start": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
    }


def model_section(spec: ModelSpec, options: Options) -> dict[str, Any]:
    return {
        "name": spec.name,
        "version": spec.version,
        "alias": ALIAS,
        "context": spec.context,
        "horizon": spec.horizon,
        "tracking_uri": options.tracking_uri,
    }


def settings_section(spec: ModelSpec, options: Options) -> dict[str, Any]:
    return {
        "duration_s": options.duration_s,
        "warmup_s": options.warmup_s,
        "concurrency": list(options.concurrencies),
        "series_per_request": list(options.sizes),
        "points_per_series": spec.context,
        "workers_per_server": 1,
    }


def measure(spec: ModelSpec, options: Options) -> dict[str, Any]:
    """Starts both servers, checks they serve the expected version, runs every cell, stops them."""
    progress(f"starting both servers on {spec.name} version {spec.version}; logs in {options.log_dir}")
    with servers(options) as targets:
        progress("both servers are ready")
        if (version := served_version(targets[0])) != spec.version or champion(options.tracking_uri) != spec:
            raise BenchError(f"the champion moved during start-up (bentoml serves {version}, not {spec.version})")
        return asyncio.run(run_cells(targets, spec, options))


def run(options: Options) -> dict[str, Any]:
    report: dict[str, Any] = {"bench": "serving", "machine": machine()}
    spec = champion(options.tracking_uri)
    report["model"] = model_section(spec, options)
    report["settings"] = settings_section(spec, options)
    report.update(measure(spec, options))
    report["summary"] = summary(report["servers"])
    report["machine"]["load_avg_end"] = [round(value, 2) for value in os.getloadavg()]
    report["logs"] = str(options.log_dir)
    return report


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through servers(), which stops both process groups


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        report = run(options)
    except BenchError as error:
        print(f"bench/serving.py: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench/serving.py: interrupted; both servers were stopped", file=sys.stderr)
        return 130
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
