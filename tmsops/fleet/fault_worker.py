"""A process that stresses one replica's resources until its time-to-live ends.

``python -m tmsops.fleet.fault_worker --ttl 60 --watch-pid 1234 cpu --load 80``

The worker ends by itself when its TTL ends, when the replica it watches is gone, or on
SIGTERM, and removes what it made (a disk-fill file) on the way out. So a fault ends
even when nothing comes back to revert it. Kinds:

- ``cpu --load P``: one core busy P percent of the time (in 100 ms periods);
- ``memory --rate-mb R --cap-mb C``: resident memory growing by R MB/s up to C MB;
- ``disk --path DIR --fill-percent P --floor-mb F --file NAME``: a file that brings the
  volume of DIR to P percent used, never leaving less than F MB free.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType

PERIOD_S = 0.1
MB = 2**20
FILL_PREFIX = ".tmsops-fill-"


class Stop(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    deadline = time.monotonic() + args.ttl
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        if args.kind == "cpu":
            _burn(args.load, deadline, args.watch_pid)
        elif args.kind == "memory":
            _grow(args.rate_mb, args.cap_mb, deadline, args.watch_pid)
        else:
            _fill(Path(args.path) / args.file, args.fill_percent, args.floor_mb, deadline, args.watch_pid)
    except Stop:
        pass
    return 0


def fill_size(path: Path, fill_percent: float, floor_mb: float) -> int:
    """Bytes to write under ``path`` to reach ``fill_percent`` used, keeping ``floor_mb`` free (0 if none)."""
    usage = shutil.disk_usage(path)
    wanted = usage.total * fill_percent / 100 - usage.used
    allowed = usage.free - floor_mb * MB
    return max(0, int(min(wanted, allowed)))


def _burn(load_percent: float, deadline: float, watch_pid: int | None) -> None:
    busy_s = PERIOD_S * load_percent / 100
    while _should_run(deadline, watch_pid):
        start = time.perf_counter()
        while time.perf_counter() - start < busy_s:
            pass
        time.sleep(max(0.0, PERIOD_S - busy_s))


def _grow(rate_mb: float, cap_mb: float, deadline: float, watch_pid: int | None) -> None:
    held: list[bytearray] = []
    started = time.monotonic()
    while _should_run(deadline, watch_pid):
        target_mb = min(cap_mb, rate_mb * (time.monotonic() - started))
        while len(held) < int(target_mb):
            held.append(bytearray(os.urandom(16)) * (MB // 16))
        time.sleep(PERIOD_S)


def _fill(file: Path, fill_percent: float, floor_mb: float, deadline: float, watch_pid: int | None) -> None:
    size = fill_size(file.parent, fill_percent, floor_mb)
    try:
        if size > 0:
            with file.open("wb") as handle:
                os.posix_fallocate(handle.fileno(), 0, size)
        while _should_run(deadline, watch_pid):
            time.sleep(PERIOD_S)
    finally:
        file.unlink(missing_ok=True)


def _should_run(deadline: float, watch_pid: int | None) -> bool:
    return time.monotonic() < deadline and (watch_pid is None or _alive(watch_pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _raise_stop(_signum: int, _frame: FrameType | None) -> None:
    raise Stop


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tmsops.fleet.fault_worker")
    parser.add_argument("--ttl", type=float, required=True, help="seconds before the worker ends by itself")
    parser.add_argument("--watch-pid", type=int, help="end when this process is gone")
    kinds = parser.add_subparsers(dest="kind", required=True)
    cpu = kinds.add_parser("cpu")
    cpu.add_argument("--load", type=float, default=100.0)
    memory = kinds.add_parser("memory")
    memory.add_argument("--rate-mb", type=float, required=True)
    memory.add_argument("--cap-mb", type=float, required=True)
    disk = kinds.add_parser("disk")
    disk.add_argument("--path", required=True)
    disk.add_argument("--file", required=True)
    disk.add_argument("--fill-percent", type=float, required=True)
    disk.add_argument("--floor-mb", type=float, required=True)
    return parser


if __name__ == "__main__":
    sys.exit(main())
