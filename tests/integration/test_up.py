"""``tmsops up`` starts parts in order, waits for their health, and leaves no process behind."""

from __future__ import annotations

import sys
from pathlib import Path

import psutil
import pytest
from support.net import free_port

from tmsops.up import Part, StartUpFailed, running


def http_part(name: str) -> Part:
    port = free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    return Part(name, command, f"http://127.0.0.1:{port}/", 30.0, f"http://127.0.0.1:{port}/")


def children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True) if child.status() != psutil.STATUS_ZOMBIE}


def test_parts_start_healthy_and_stop_with_nothing_left(tmp_path: Path) -> None:
    before = children()
    with running([http_part("first"), http_part("second")], tmp_path) as started:
        assert [item.process.poll() for item in started] == [None, None]
        assert len(children() - before) == 2
    assert children() <= before
    assert (tmp_path / "first.log").exists()


def test_a_part_that_exits_stops_the_start_and_the_parts_before_it(tmp_path: Path) -> None:
    before = children()
    broken = Part(
        "broken",
        [sys.executable, "-c", "print('no champion model'); raise SystemExit(2)"],
        "http://127.0.0.1:9/",
        30,
        "",
    )
    with (
        pytest.raises(StartUpFailed, match=r"broken exited with code 2:\nno champion model"),
        running([http_part("first"), broken], tmp_path),
    ):
        pass
    assert children() <= before
