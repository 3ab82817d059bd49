"""Soak: the whole demo platform (`tmsops up --demo`) for a few minutes, watched from outside.

It starts the platform in a state directory of its own, on the champion models of
``MLFLOW_TRACKING_URI`` (default: this checkout's ``mlruns/``; run ``make train`` first), and
while the demo's story plays (a day of traffic compressed 150 times, the sample chaos
experiment, the optimizer's index) it samples the memory (RSS) of every part every
``--sample-s`` seconds. Then it stops the platform with SIGINT (Ctrl-C) and reports, as one
JSON object:

- ``memory``: per part, the median RSS of the first and of the last third of the samples
  taken after ``--warmup-s`` (the fleet's replicas are entries of their own, per replica of
  each service: their count follows the autoscaler), and the growth between the two; flat means under
  ``--max-growth-pct``;
- ``log_errors``: lines at level ERROR or CRITICAL, and tracebacks, in every part's log;
- ``decisions``: the autoscaler's decisions per service against the decision cycles that
  fit in the run (a gap of more than three intervals between two of a service's decisions
  counts as lost cycles), and decisions whose action failed;
- ``story``: the lines the demo printed (the experiment's end, the index kept);
- ``stop``: how long Ctrl-C took, processes left behind, ports still listening, faults left.

    .venv/bin/python bench/soak.py --minutes 6
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

PORTS = (5000, 3000, 8010, 8011, 8012, 8013, 8080, 8081, 8082)
PART_MODULES = {
    "serving": "model server",
    "tmsops.fleet": "fleet",
    "actuators.autoscaler": "autoscaler",
    "actuators.optimizer": "optimizer",
    "chaos": "chaos",
    "mlflow": "mlflow ui",
    "tmsops.demo.scenario": "demo",
}
ERROR_LINE = re.compile(r'"level": "(ERROR|CRITICAL)"|^Traceback |\[ERROR\]|^ERROR[: ]')
DECISION_INTERVAL_S = 4.0  # the demo's scaling.interval


def part_of(process: psutil.Process) -> str | None:
    try:
        command = process.cmdline()
    except psutil.Error:
        return None
    if "-m" in command and command.index("-m") + 1 < len(command):
        module = command[command.index("-m") + 1]
        return PART_MODULES.get(module)
    return None


def memory_by_part(up: psutil.Process) -> dict[str, float]:
    """RSS in MiB of each part's process tree; the fleet's replicas apart, per replica of each
    service (their number follows the autoscaler, and the services' replicas differ in size)."""
    totals: dict[str, float] = defaultdict(float)
    replicas: dict[str, int] = defaultdict(int)
    for child in up.children():
        name = part_of(child)
        if name is None:
            continue
        try:
            tree = [child, *child.children(recursive=True)]
        except psutil.Error:
            continue
        for process in tree:
            try:
                rss = process.memory_info().rss / 2**20
                kind = replica_kind(process) if name == "fleet" and process is not child else None
            except psutil.Error:
                continue
            totals[kind or name] += rss
            if kind:
                replicas[kind] += 1
    for kind, count in replicas.items():
        totals[kind] /= count
    return dict(totals)


def replica_kind(process: psutil.Process) -> str | None:
    """``<service> replica (each)`` for a replica of a demo service, None for another process."""
    command = process.cmdline()
    module = command[command.index("-m") + 1] if "-m" in command[:-1] else ""
    return f"{module.removeprefix('tmsops.demo.')} replica (each)" if module.startswith("tmsops.demo.") else None


def growth(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    third = max(1, len(samples) // 3)
    report = {}
    for name in sorted({name for sample in samples for name in sample}):
        first = statistics.median(sample.get(name, 0.0) for sample in samples[:third])
        last = statistics.median(sample.get(name, 0.0) for sample in samples[-third:])
        report[name] = {
            "first_mb": round(first, 1),
            "last_mb": round(last, 1),
            "growth_pct": round(100 * (last - first) / first, 1) if first else 0.0,
        }
    return report


def log_errors(logs: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for log in sorted(logs.glob("*.log")):
        lines = [line.strip()[:300] for line in log.read_text(errors="replace").splitlines() if ERROR_LINE.search(line)]
        if lines:
            found[log.name] = lines
    return found


def decisions_report(elapsed_s: float) -> dict[str, Any]:
    records = httpx.get("http://127.0.0.1:8011/decisions", params={"limit": 1000}, timeout=10).json()
    by_service: dict[str, list[float]] = defaultdict(list)
    failed = []
    for record in records:
        if record.get("source") != "loop":
            continue
        at = datetime.fromisoformat(record["at"].replace("Z", "+00:00")).timestamp()
        by_service[record["service"]].append(at)
        if record.get("error"):
            failed.append(f"{record['service']}: {record['error']}")
    lost = 0
    for stamps in by_service.values():
        stamps.sort()
        lost += sum(
            max(0, round((b - a) / DECISION_INTERVAL_S) - 1)
            for a, b in itertools.pairwise(stamps)
            if b - a > 3 * DECISION_INTERVAL_S
        )
    return {
        "services": len(by_service),
        "recorded": sum(len(stamps) for stamps in by_service.values()),
        "cycles_that_fit": int(elapsed_s / DECISION_INTERVAL_S),
        "lost": lost,
        "failed_actions": failed[:10],
        "scale_changes": sum(
            1 for record in records if record.get("applied") and record["desired"] != record["current"]
        ),
    }


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--max-growth-pct", type=float, default=10.0)
    args = parser.parse_args()
    busy = [port for port in PORTS if listening(port)]
    if busy:
        sys.exit(f"ports {busy} are in use: stop what runs there (`tmsops down`) first")
    repo = Path(__file__).resolve().parents[1]
    tracking = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    work = Path(tempfile.mkdtemp(prefix="tmsops-soak-"))
    env = {**os.environ, "TMSOPS_STATE_DIR": str(work / "state"), "MLFLOW_TRACKING_URI": tracking}
    tmsops = str(Path(sys.executable).parent / "tmsops")
    began = time.monotonic()
    up = subprocess.Popen(
        [tmsops, "up", "--demo"], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    assert up.stdout is not None
    stream = up.stdout
    threading.Thread(target=lambda: lines.extend(stream), daemon=True).start()
    while not any(line.startswith("tmsops is up") for line in lines):
        if up.poll() is not None or time.monotonic() - began > 600:
            sys.exit("tmsops up did not come up:\n" + "".join(lines[-40:]))
        time.sleep(0.5)
    start_s = time.monotonic() - began
    print(f"soak: up in {start_s:.0f} s; watching for {args.minutes:g} min", file=sys.stderr, flush=True)
    process = psutil.Process(up.pid)
    samples: list[dict[str, float]] = []
    watched_from = time.monotonic()
    end = watched_from + args.minutes * 60
    while time.monotonic() < end and up.poll() is None:
        if time.monotonic() - watched_from >= args.warmup_s:
            samples.append(memory_by_part(process))
        time.sleep(args.sample_s)
    elapsed = time.monotonic() - watched_from
    decisions = decisions_report(elapsed)
    faults = httpx.get("http://127.0.0.1:8010/faults", timeout=10).json()
    tree = [process, *process.children(recursive=True)]
    stopping = time.monotonic()
    up.send_signal(signal.SIGINT)
    up.wait(timeout=180)
    stop_s = time.monotonic() - stopping
    left = [p.cmdline() for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    memory = growth(samples)
    errors = log_errors(work / "state" / "logs")
    story = [line.strip() for line in lines if line.startswith("demo: ") and ("chaos:" in line or "optimizer:" in line)]
    result = {
        "minutes": args.minutes,
        "samples": len(samples),
        "start_s": round(start_s, 1),
        "memory": memory,
        "log_errors": {name: len(found) for name, found in errors.items()},
        "log_error_examples": {name: found[:3] for name, found in errors.items()},
        "decisions": decisions,
        "story": story,
        "stop": {
            "stop_s": round(stop_s, 1),
            "processes_left": len(left),
            "ports_listening": [port for port in PORTS if listening(port)],
            "faults_active_before_stop": sum(1 for fault in faults if fault["state"] == "active"),
        },
        "state_dir": str(work / "state"),
    }
    result["summary"] = {
        "memory_flat": all(entry["growth_pct"] < args.max_growth_pct for entry in memory.values()),
        "max_growth_pct": max((entry["growth_pct"] for entry in memory.values()), default=None),
        "log_errors": sum(len(found) for found in errors.values()),
        "lost_decisions": decisions["lost"],
        "failed_actions": len(decisions["failed_actions"]),
        "experiment_rolled_back": any("rolled back" in line for line in story),
        "index_kept": any(": kept" in line for line in story),
        "clean_stop": not left and not result["stop"]["ports_listening"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
