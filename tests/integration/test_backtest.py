"""``tmsops backtest`` as a real command: reactive, and predictive against a real model server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.xdist_group("model-server")

TMSOPS = Path(sys.executable).parent / "tmsops"
ROWS = 400  # more than the 288 points of context the predictive policy sends


def _tmsops(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TMSOPS), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    """A day and a half of a daily cycle with an afternoon spike, at 5-minute steps."""
    steps = np.arange(ROWS)
    rng = np.random.default_rng(3)
    values = 200 + 120 * np.sin(2 * np.pi * steps / 288) + rng.normal(0, 8, ROWS)
    values[330:345] *= 1.8
    stamps = np.datetime64("2026-01-05T00:00") + steps * np.timedelta64(5, "m")
    lines = [f"{str(stamp).replace('T', ' ')},{value:.3f}" for stamp, value in zip(stamps, values, strict=True)]
    path = tmp_path / "daily.csv"
    path.write_text("timestamp,value\n" + "\n".join(lines) + "\n")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_hpa_backtest_prints_the_report(trace: Path, tmp_path: Path) -> None:
    done = _tmsops("backtest", "--trace", str(trace), "--policy", "hpa", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["trace"] == "daily" and figures["policy"] == "hpa" and figures["model"] is None
    assert figures["duration_hours"] == pytest.approx((ROWS - 1) * 5 / 60, abs=1e-3)
    assert figures["scaling_actions"] > 0
    assert figures["replica_hours"] > 0
    assert figures["slo_violation_minutes"] >= 0 and figures["p95_latency_ms"] > 0
    table = _tmsops("backtest", "--trace", str(trace), "--policy", "hpa", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "slo_violation_minutes" in table.stdout and "{" not in table.stdout


def test_predictive_backtest_uses_the_model_server_and_caches(
    model_server_url: str, trace: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    args = ("backtest", "--trace", str(trace), "--policy", "predictive", "--json")
    options = ("--model-server", model_server_url, "--cache-dir", str(cache))
    first = _tmsops(*args, *options, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    figures = json.loads(first.stdout)
    assert figures["model"] == {"name": "load-forecaster", "version": "1"}
    assert 0 < figures["forecast_share"] < 1  # no forecast before the first 288 points
    assert len(list(cache.glob("daily-*.npz"))) == 1
    again = _tmsops(*args, *options, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == figures


def test_predictive_without_a_model_server_is_one_line_and_exit_2(trace: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    done = _tmsops("backtest", "--trace", str(trace), "--policy", "predictive", "--model-server", url, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert url in done.stderr and "make serve" in done.stderr


def test_bad_trace_and_unknown_policy_exit_2(trace: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,value\n2026-01-05 00:00:00,1\n2026-01-05 00:05:00,-4\n")
    done = _tmsops("backtest", "--trace", str(bad), "--policy", "hpa", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {bad}: row 2 (line 3): demand -4 is negative"
    done = _tmsops("backtest", "--trace", str(trace), "--policy", "vpa", cwd=tmp_path)
    assert done.returncode == 2
    assert "unknown policy 'vpa'" in done.stderr
