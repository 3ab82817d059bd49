"""The cache advisor against a real Redis: predicted hit rate at the recommended size vs measured.

Usage (from the repository root)::

    .venv/bin/python bench/cache_advisor.py                 # about 2.5 minutes on 2 cores
    .venv/bin/python bench/cache_advisor.py --alpha 1.0 --target 0.85
    .venv/bin/python bench/cache_advisor.py --quick         # shorter phases, about 1.5 minutes

Starts its own ``redis-server`` (a free port, a temporary directory, no persistence),
loads ``--keys`` keys of 200-1000 bytes, and runs a cache-aside client in another process
(GET; on a miss, SET) at ``--ops-rate`` GETs per second with Zipf(``--alpha``) popularity.
Then:

1. ``before``: the hit rate with every key cached (INFO deltas);
2. ``analyze``: :class:`CacheAdvisor` samples the traffic with MONITOR at ``--rate`` for
   ``--window`` seconds and recommends ``maxmemory`` and a policy for ``--target``;
3. ``apply``: :func:`apply_change` journals and applies the recommendation (with
   ``maxmemory-samples 10``), waits ``--settle`` seconds and measures; keeps or rolls back;
4. ``measure``: the hit rate over ``--measure`` seconds more, from INFO deltas (MONITOR is
   long closed), with the keys held and the memory used;
5. ``peer``: the other policy (LRU <-> LFU) at the same ``maxmemory``, settled and
   measured the same way: did the adaptive choice pick the better one?

``summary.predicted_hit_rate`` is the recommended curve's value at the recommended size
(Redis's policy simulated on the sampled trace); ``exact_lru_hit_rate`` is the exact LRU
curve at that size, for comparison. Prints one JSON object; Redis and the client are
stopped at the end, also on errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import numpy as np
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from actuators.optimizer.cache.advisor import CacheAdvisor, CacheReport  # noqa: E402
from actuators.optimizer.cache.apply import CacheChange, apply_change, measure_hit_rate  # noqa: E402
from actuators.optimizer.cache.mrc import hit_rate_at  # noqa: E402
from actuators.optimizer.journal import OptimizationJournal  # noqa: E402
from tmsops.state import make_engine  # noqa: E402

BATCH = 50
START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def progress(message: str) -> None:
    print(f"[bench/cache_advisor] {message}", file=sys.stderr, flush=True)


def value_sizes(keys: int, seed: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    return np.random.default_rng(seed).integers(200, 1001, keys)


def zipf_cdf(keys: int, alpha: float) -> np.ndarray[Any, np.dtype[np.float64]]:
    weights = np.arange(1, keys + 1, dtype=np.float64) ** -alpha
    return np.cumsum(weights / weights.sum())


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(workdir), "--logfile", str(workdir / "redis.log")]
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            client.ping()
            return process, port
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise SystemExit(f"redis-server did not start on port {port}") from None
            time.sleep(0.05)
        finally:
            client.close()


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def load_keys(port: int, keys: int, seed: int) -> dict[str, Any]:
    sizes = value_sizes(keys, seed)
    client = redis.Redis(port=port)
    begin = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for index in range(keys):
        pipe.set(f"item:{index}", b"v" * int(sizes[index]))
        if index % 1000 == 999:
            pipe.execute()
    pipe.execute()
    info = client.info("memory")
    client.close()
    return {
        "keys": keys,
        "mean_value_bytes": round(float(sizes.mean()), 1),
        "used_memory": int(info["used_memory"]),
        "seconds": round(time.perf_counter() - begin, 2),
    }


def cache_aside_client(
    port: int,
    keys: int,
    alpha: float,
    ops_rate: float,
    seed: int,
    stop: Event,
    gets: Synchronized[int],
    hits: Synchronized[int],
) -> None:
    """GET a Zipf-chosen key; on a miss SET it (the value of its fixed size). Open loop at ``ops_rate`` GETs/s."""
    sizes = value_sizes(keys, seed)
    cdf = zipf_cdf(keys, alpha)
    rng = np.random.default_rng(seed + 1)
    ranked = np.random.default_rng(seed + 2).permutation(keys)  # popularity rank -> key number
    client = redis.Redis(port=port)
    done = 0
    start = time.monotonic()
    while not stop.is_set():
        chosen = ranked[np.minimum(np.searchsorted(cdf, rng.random(BATCH * 100)), keys - 1)]
        for offset in range(0, len(chosen), BATCH):
            if stop.is_set():
                break
            names = [f"item:{number}" for number in chosen[offset : offset + BATCH]]
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.get(name)
            replies = pipe.execute()
            pipe = client.pipeline(transaction=False)
            missed = 0
            for name, reply in zip(names, replies, strict=True):
                if reply is None:
                    pipe.set(name, b"v" * int(sizes[int(name[5:])]))
                    missed += 1
            if missed:
                pipe.execute()
            with gets.get_lock():
                gets.value += len(names)
            with hits.get_lock():
                hits.value += len(names) - missed
            done += len(names)
            ahead = start + done / ops_rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            elif ahead < -1.0:  # fell behind (CPU busy elsewhere): do not burst to catch up
                start, done = time.monotonic(), 0
    client.close()


async def phase(client: Any, seconds: float, gets: Synchronized[int]) -> dict[str, Any]:
    """INFO-delta hit rate over ``seconds``, the client's GET rate, the memory and keys at the end."""
    first = gets.value
    window = await measure_hit_rate(client, seconds)
    info = await client.info("memory")
    return {
        "hit_rate": window.hit_rate,
        "lookups": window.lookups,
        "gets_per_s": round((gets.value - first) / seconds, 1),
        "evicted_keys": window.evicted_keys,
        "keys_held": window.keys,
        "used_memory": window.used_memory,
        "maxmemory": int(info["maxmemory"]),
        "maxmemory_policy": str(info["maxmemory_policy"]),
    }


def curve_points(report: CacheReport) -> dict[str, list[list[float]]]:
    curves = {}
    for curve in report.curves:
        name = "exact_lru" if curve.model == "stack" else f"redis_{curve.policy}_simulated"
        curves[name] = [[point.size_keys, point.hit_rate] for point in curve.points]
    return curves


async def run(options: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    process, port = start_redis(workdir)
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    gets, hits = context.Value("q", 0), context.Value("q", 0)
    worker = None
    try:
        progress(f"redis-server on port {port}; loading {options.keys} keys")
        loaded = load_keys(port, options.keys, options.seed)
        worker = context.Process(
            target=cache_aside_client,
            args=(port, options.keys, options.alpha, options.ops_rate, options.seed, stop, gets, hits),
            daemon=True,
        )
        worker.start()
        return await _phases(options, workdir, port, loaded, gets)
    finally:
        stop.set()
        if worker is not None:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
        stop_process(process)


async def _phases(
    options: argparse.Namespace, workdir: Path, port: int, loaded: dict[str, Any], gets: Synchronized[int]
) -> dict[str, Any]:
    import redis.asyncio as aioredis

    url = f"redis://127.0.0.1:{port}/0"
    client = aioredis.Redis.from_url(url)
    try:
        await asyncio.sleep(2)  # the client process starts
        progress("before: every key cached")
        before = await phase(client, options.before, gets)
        progress(f"analyze: MONITOR for {options.window:g} s at rate {options.rate}")
        begin = time.perf_counter()
        advisor = CacheAdvisor(
            url,
            service="bench",
            target_hit_rate=options.target,
            sample_rate=options.rate,
            sample_window_s=options.window,
            strategy=options.strategy,
        )
        async with advisor:
            report = await advisor.analyze()
        analyze_s = time.perf_counter() - begin
        recommendation = report.recommendation
        if recommendation.memory is None:
            return {"error": "no memory recommendation", "notes": recommendation.notes, "report": report.model_dump()}
        change = CacheChange.from_recommendation(recommendation)
        progress(f"apply: {change.settings()}; settle {options.settle:g} s, measure {options.measure:g} s")
        journal = OptimizationJournal(make_engine(f"sqlite:///{workdir / 'journal.db'}"))
        entry = await apply_change(
            journal,
            change,
            redis_url=url,
            service="bench",
            target_hit_rate=options.target,
            window_s=options.measure,
            settle_s=options.settle,
        )
        progress(f"apply: {entry.status.value} ({entry.reason}); measuring again")
        measured = await phase(client, options.measure, gets)
        peer = await _peer(client, options, recommendation.policy.policy, gets)
    finally:
        await client.aclose()
    return _result(options, loaded, before, report, analyze_s, entry.model_dump(mode="json"), measured, peer)


async def _peer(client: Any, options: argparse.Namespace, chosen: str, gets: Synchronized[int]) -> dict[str, Any]:
    other = "allkeys-lfu" if chosen == "allkeys-lru" else "allkeys-lru"
    progress(f"peer: {other} at the same maxmemory")
    await client.config_set("maxmemory-policy", other)
    await asyncio.sleep(options.settle)
    return await phase(client, options.measure, gets)


def _result(
    options: argparse.Namespace,
    loaded: dict[str, Any],
    before: dict[str, Any],
    report: CacheReport,
    analyze_s: float,
    entry: dict[str, Any],
    measured: dict[str, Any],
    peer: dict[str, Any],
) -> dict[str, Any]:
    recommendation = report.recommendation
    memory = recommendation.memory
    assert memory is not None
    exact = next(curve for curve in report.curves if curve.model == "stack")
    predicted = memory.predicted_hit_rate
    after = entry.get("after") or {}
    return {
        "bench": "cache_advisor",
        "settings": {
            "keys": options.keys,
            "alpha": options.alpha,
            "ops_rate": options.ops_rate,
            "target_hit_rate": options.target,
            "sample_rate": options.rate,
            "window_s": options.window,
            "settle_s": options.settle,
            "measure_s": options.measure,
            "strategy": options.strategy,
        },
        "phases": {
            "load": loaded,
            "before": before,
            "analyze": {
                "seconds": round(analyze_s, 1),
                "trace": report.trace.model_dump(),
                "window_hit_rate": report.window_hit_rate,
                "skew": report.skew.model_dump() if report.skew else None,
                "memory": memory.model_dump(),
                "policy": recommendation.policy.model_dump(),
                "ttls": [ttl.model_dump() for ttl in recommendation.ttls[:3]],
                "notes": recommendation.notes,
            },
            "apply": {key: entry[key] for key in ("status", "reason", "change", "undo", "after")},
            "measure": measured,
            "peer": peer,
        },
        "curves": curve_points(report),
        "summary": {
            "target_hit_rate": options.target,
            "policy": recommendation.policy.policy,
            "maxmemory_bytes": memory.maxmemory_bytes,
            "recommended_keys": memory.size_keys,
            "keys_held": measured["keys_held"],
            "predicted_hit_rate": round(predicted, 4),
            "exact_lru_hit_rate": round(hit_rate_at(exact, memory.size_keys), 4),
            "apply_status": entry["status"],
            "apply_measured_hit_rate": after.get("hit_rate"),
            "measured_hit_rate": measured["hit_rate"],
            "error_points": round(100 * (measured["hit_rate"] - predicted), 2),
            "within_2_points": abs(measured["hit_rate"] - predicted) <= 0.02,
            "meets_target": measured["hit_rate"] >= options.target,
            "memory_saved_pct": round(100 * (1 - measured["used_memory"] / loaded["used_memory"]), 1),
            "peer_policy": peer["maxmemory_policy"],
            "peer_measured_hit_rate": peer["hit_rate"],
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=50_000, help="keys loaded (default 50000)")
    parser.add_argument("--alpha", type=float, default=0.9, help="Zipf exponent of the popularity (default 0.9)")
    parser.add_argument("--ops-rate", type=float, default=20_000, help="GETs per second of the client (default 20000)")
    parser.add_argument("--target", type=float, default=0.9, help="target hit rate (default 0.9)")
    parser.add_argument("--rate", type=float, default=0.1, help="spatial sample rate (default 0.1)")
    parser.add_argument("--window", type=float, default=30.0, help="MONITOR window, seconds (default 30)")
    parser.add_argument("--strategy", default="adaptive", choices=["adaptive", "lru", "lfu", "ttl"])
    parser.add_argument("--before", type=float, default=5.0, help="seconds of the before phase (default 5)")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds after a change (default 15)")
    parser.add_argument("--measure", type=float, default=15.0, help="seconds per measurement (default 15)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="20 s window, 8 s settle and measurements")
    options = parser.parse_args(argv)
    if options.quick:
        options.window, options.settle, options.measure, options.before = 20.0, 8.0, 8.0, 3.0
    machine = {"cpu_count": os.cpu_count(), "python": platform.python_version(), "load_avg_start": os.getloadavg()}
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tmsops-bench-cache-") as tmp:
        result = asyncio.run(run(options, Path(tmp)))
    machine["load_avg_end"] = os.getloadavg()
    print(json.dumps({**result, "seconds": round(time.perf_counter() - begin, 1), "machine": machine}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
