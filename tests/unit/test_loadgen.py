"""The load generator: reading traces, the rate schedule, arrivals, the report, and the open-loop client."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tmsops.errors import DataError, PermanentError
from tmsops.loadgen import (
    CLIENT_OVERLOAD,
    RateSchedule,
    ReplayOptions,
    RouteMix,
    Sample,
    Trace,
    arrival_times,
    build_report,
    percentiles,
    plan_request,
    rate_schedule,
    read_trace,
    replay,
)
from tmsops.loadgen_cli import app

NAB_TEXT = "timestamp,value\n2014-02-14 14:30:00,1.0\n2014-02-14 14:35:00,2.0\n2014-02-14 14:40:00,4.0\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def flat(rate: float, seconds: float) -> RateSchedule:
    return RateSchedule((0.0, seconds), (rate, rate), seconds)


def test_nab_layout_reads_the_step_from_timestamps(tmp_path: Path) -> None:
    path = write(tmp_path / "data" / "realAWSCloudwatch" / "ec2_cpu.csv", NAB_TEXT)
    trace = read_trace(path)
    assert trace.offsets_s == (0.0, 300.0, 600.0)
    assert trace.values == (1.0, 2.0, 4.0)
    assert trace.source == str(path)


def test_single_column_uses_the_given_step(tmp_path: Path) -> None:
    trace = read_trace(write(tmp_path / "rps.csv", "rps\n10\n20\n\n30\n"), step_s=60)
    assert trace.offsets_s == (0.0, 60.0, 120.0)
    assert trace.values == (10.0, 20.0, 30.0)


@pytest.mark.parametrize(
    ("content", "step", "problem"),
    [
        ("", None, "the file is empty"),
        ("timestamp,count\n2024-01-01,1\n2024-01-02,2\n", None, "missing column"),
        ("value\n1\n2\n", None, r"no 'timestamp' column.*--step"),
        ("timestamp,value\n2024-01-01,1\n2024-01-02,abc\n", None, r"row 3: 'abc' is not a number"),
        ("timestamp,value\n2024-01-01,1\n2024-01-02,-5\n", None, r"row 3: -5 is not a rate"),
        ("value\n1\nnan\n", 1.0, r"row 3: nan is not a rate"),
        ("timestamp,value\n2024-01-01,1\n", None, "1 data row"),
        ("timestamp,value\n2024-01-02,1\n2024-01-01,2\n", None, r"row 3: the timestamp is not after"),
        ("timestamp,value\n2024-01-01,1\nyesterday,2\n", None, r"row 3: 'yesterday' is not a timestamp"),
        ("timestamp,value\n2024-01-01,1\n2024-01-02,\n", None, r"row 3: the cell is empty"),
    ],
)
def test_bad_traces_name_the_file_and_row(tmp_path: Path, content: str, step: float | None, problem: str) -> None:
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(DataError, match=problem) as error:
        read_trace(path, step)
    assert error.value.source == str(path)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        read_trace(tmp_path / "nope.csv")


def test_schedule_compresses_time_and_scales_to_the_peak() -> None:
    trace = Trace("t", (0.0, 300.0, 600.0), (1.0, 2.0, 4.0))
    schedule = rate_schedule(trace, compress=150, peak_rps=50)
    assert schedule.times_s == (0.0, 2.0, 4.0)
    assert schedule.rates == (12.5, 25.0, 50.0)
    assert schedule.duration_s == 4.0
    assert schedule.factor == 12.5
    assert schedule.rate_at(1.0) == pytest.approx(18.75)
    assert schedule.rate_at(9.0) == 50.0
    assert schedule.expected_requests() == pytest.approx((12.5 + 25) / 2 * 2 + (25 + 50) / 2 * 2)


def test_schedule_scale_factor_and_duration_cap() -> None:
    trace = Trace("t", (0.0, 100.0), (3.0, 3.0))
    schedule = rate_schedule(trace, scale=2.0, max_duration_s=10)
    assert schedule.rates == (6.0, 6.0)
    assert schedule.duration_s == 10.0
    assert schedule.expected_requests() == pytest.approx(60.0)


def test_schedule_refuses_unusable_options() -> None:
    trace = Trace("t", (0.0, 1.0), (0.0, 0.0))
    with pytest.raises(DataError, match="every value is 0"):
        rate_schedule(trace, peak_rps=10)
    with pytest.raises(PermanentError, match="not both"):
        rate_schedule(trace, peak_rps=10, scale=1)
    with pytest.raises(PermanentError, match="compress"):
        rate_schedule(trace, compress=0)


def test_arrivals_follow_the_rate() -> None:
    schedule = RateSchedule((0.0, 10.0, 20.0), (0.0, 200.0, 0.0), 20.0)
    times = list(arrival_times(schedule, random.Random(7)))
    assert times == sorted(times) and all(0 <= t < 20 for t in times)
    expected = schedule.expected_requests()
    assert abs(len(times) - expected) < 4 * expected**0.5
    middle = sum(1 for t in times if 5 <= t < 15)
    assert middle > 2 * (len(times) - middle)


def test_percentiles_on_known_latencies() -> None:
    assert percentiles([float(value) for value in range(1, 101)], (50, 95, 99)) == pytest.approx([50.5, 95.05, 99.01])
    assert percentiles([], (50,)) == [None]


def test_report_counts_errors_and_builds_a_timeline() -> None:
    samples = [
        Sample("get", 0.1, 10.0, 200, None),
        Sample("get", 0.5, 20.0, 200, None),
        Sample("list", 1.2, 30.0, 503, "http_503"),
        Sample("post", 1.7, 5000.0, None, "timeout"),
        Sample("post", 1.9, None, None, CLIENT_OVERLOAD),
    ]
    report = build_report(samples, flat(2.5, 2.0), url="http://x", trace="t.csv", duration_s=2.0)
    assert (report.requests, report.ok, report.errors) == (5, 2, 3)
    assert report.error_pct == pytest.approx(60.0)
    assert report.errors_by_kind == {"http_503": 1, "timeout": 1, CLIENT_OVERLOAD: 1}
    assert report.requests_by_route == {"get": 2, "list": 1, "post": 2}
    assert report.achieved_rps == pytest.approx(2.0)
    assert report.ok_rps == pytest.approx(1.0)
    assert report.latency_p50_ms == pytest.approx(25.0)
    assert report.latency_max_ms == 5000.0
    assert [(point.second, point.sent, point.ok, point.errors) for point in report.timeline] == [
        (0, 2, 2, 0),
        (1, 3, 0, 3),
    ]
    assert report.timeline[0].p95_ms == pytest.approx(19.5)
    assert report.target_requests == pytest.approx(5.0)


def test_route_mix_parsing_and_planning() -> None:
    mix = RouteMix.parse("get=1, post=3")
    assert (mix.get, mix.list, mix.post) == (1.0, 0.0, 3.0)
    rng = random.Random(3)
    planned = [plan_request(rng, mix, max_id=50, customers=5) for _ in range(400)]
    posts = [item for item in planned if item.route == "post"]
    assert 250 < len(posts) < 350 and all(item.method == "POST" and item.body for item in posts)
    gets = [item for item in planned if item.route == "get"]
    assert all(1 <= int(item.path.rsplit("/", 1)[1]) <= 50 for item in gets)
    with pytest.raises(PermanentError, match="unknown route"):
        RouteMix.parse("delete=5")
    with pytest.raises(PermanentError, match="add up to nothing"):
        RouteMix.parse("get=0")


async def slow_app(scope: dict, receive: object, send: object) -> None:
    """An in-test HTTP server (ASGI): every answer takes 300 ms."""
    await asyncio.sleep(0.3)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"{}"})  # type: ignore[operator]


def test_replay_is_open_loop_and_counts_client_overload() -> None:
    options = ReplayOptions(max_in_flight=3, seed=1)
    transport = httpx.ASGITransport(app=slow_app)  # type: ignore[arg-type]
    report = asyncio.run(replay(flat(40, 1.0), "http://test", options, transport=transport))
    assert report.requests > 10
    assert report.errors_by_kind.get(CLIENT_OVERLOAD, 0) > 0
    assert report.ok == report.requests - report.errors_by_kind[CLIENT_OVERLOAD]
    assert report.duration_s == 1.0


def test_cli_reports_a_bad_trace(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.csv", "timestamp,value\n2024-01-01,1\n")
    result = CliRunner().invoke(app, ["replay", "--trace", str(path), "--url", "http://127.0.0.1:9"])
    assert isinstance(result.exception, DataError)


def test_cli_json_report_and_timeline(tmp_path: Path) -> None:
    trace = write(tmp_path / "flat.csv", "value\n0\n0\n")
    timeline = tmp_path / "out" / "timeline.csv"
    args = ["replay", "--trace", str(trace), "--step", "1", "--scale", "1", "--json", "--timeline", str(timeline)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["requests"] == 0 and report["duration_s"] == 1.0
    assert timeline.read_text().splitlines()[0] == "second,target_rps,sent,ok,errors,p95_ms"
