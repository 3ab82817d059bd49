"""``tmsops up`` starts parts in order, waits for their health, and leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from support.net import free_port

from tmsops.up import PID_FILE, Interrupts, Part, StartUpFailed, down, pid_file, read_pid, running


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


def test_a_part_nothing_waits_for_is_healthy_before_the_platforms_clients_start(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The MLflow UI starts first but is waited for last; a part without a health URL (the demo's
    story) starts only once every other part is healthy, and its output reaches the terminal too."""
    slow = http_part("slow")
    slow = Part(
        slow.name,
        [
            sys.executable,
            "-c",
            f"import time, runpy, sys; time.sleep(2); sys.argv = {slow.command[2:]!r}; "
            "runpy.run_module('http.server', run_name='__main__')",
        ],
        slow.health_url,
        30.0,
        slow.url,
        wait=False,
    )
    probe = f"import urllib.request; print('story sees', urllib.request.urlopen({slow.health_url!r}).status)"
    story = Part("story", [sys.executable, "-c", probe], None, 10.0, "", console=True)
    with running([slow, http_part("first"), story], tmp_path) as started:
        started[-1].process.wait(timeout=30)
        deadline = time.monotonic() + 30  # the copy of the output runs on a thread
        while "story sees 200" not in (tmp_path / "story.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    assert "story sees 200" in (tmp_path / "story.log").read_text()
    assert "story sees 200" in capfd.readouterr().out


def test_a_second_up_on_the_same_state_is_refused_and_down_stops_the_first(tmp_path: Path) -> None:
    with pid_file(tmp_path) as path:
        assert read_pid(path) == os.getpid()
        refused = pytest.raises(StartUpFailed, match=rf"already up \(pid {os.getpid()}\); `tmsops down` stops it")
        with refused, pid_file(tmp_path):
            pass
    assert not (tmp_path / PID_FILE).exists()
    assert down(tmp_path) is None  # nothing running

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (tmp_path / PID_FILE).write_text(f"{sleeper.pid} {psutil.Process(sleeper.pid).create_time()}\n")
    assert down(tmp_path, timeout_s=30) == sleeper.pid
    sleeper.wait(timeout=5)  # down() reaped it already (it is this test's child): it has stopped
    assert not psutil.pid_exists(sleeper.pid)


def test_a_stale_pid_file_is_removed(tmp_path: Path) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / PID_FILE).write_text(finished.stdout)
    assert read_pid(tmp_path / PID_FILE) is None
    assert not (tmp_path / PID_FILE).exists()


def test_a_parts_workers_that_outlive_it_are_stopped_too(tmp_path: Path) -> None:
    """A worker that ignores SIGTERM, in the part's process group, is killed after the grace period."""
    port = free_port()
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
    command = [
        sys.executable,
        "-c",
        f"import subprocess, sys, runpy; subprocess.Popen([sys.executable, '-c', {stubborn!r}]); "
        f"sys.argv = ['http.server', '{port}', '--bind', '127.0.0.1']; "
        "runpy.run_module('http.server', run_name='__main__')",
    ]
    part = Part("with-worker", command, f"http://127.0.0.1:{port}/", 30.0, "")
    with running([part], tmp_path, grace_s=1.0) as started:
        group = started[0].process.pid
        workers = [p for p in psutil.process_iter() if p.pid != group and group_of(p.pid) == group]
        assert len(workers) == 1
    _gone, alive = psutil.wait_procs(workers, timeout=5)  # SIGKILL was sent: wait for its delivery
    assert [worker for worker in alive if worker.status() != psutil.STATUS_ZOMBIE] == []


def test_sigint_stops_everything_even_when_it_came_in_ignored(tmp_path: Path) -> None:
    """A background job starts with SIGINT ignored; `tmsops up` must still stop on it (Ctrl-C, a bench)."""
    port = free_port()
    script = tmp_path / "up.py"
    script.write_text(
        "import sys\n"
        "from pathlib import Path\n"
        "from tmsops.up import Part, running, wait_for_exit\n"
        f"web = Part('web', [sys.executable, '-m', 'http.server', '{port}', '--bind', '127.0.0.1'],"
        f" 'http://127.0.0.1:{port}/', 30.0, '')\n"
        f"with running([web], Path({str(tmp_path)!r})) as started:\n"
        "    print('up', flush=True)\n"
        "    wait_for_exit(started)\n"
    )
    up = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert up.stdout is not None
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(up.stdout or ()), daemon=True).start()
    deadline = time.monotonic() + 60
    while "up\n" not in lines and time.monotonic() < deadline and up.poll() is None:
        time.sleep(0.1)
    assert lines[:2] == ["starting web ...\n", "up\n"]
    web = psutil.Process(up.pid).children(recursive=True)
    assert web
    up.send_signal(signal.SIGINT)
    try:
        assert up.wait(timeout=30) == 0
    finally:
        for process in [*web, psutil.Process(up.pid)] if up.poll() is None else web:
            with contextlib.suppress(psutil.Error):
                process.kill()
    assert [process for process in web if process.is_running() and process.status() != psutil.STATUS_ZOMBIE] == []


def group_of(pid: int) -> int | None:
    """The process group of ``pid``, or None once it has gone (other tests start and stop processes)."""
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_an_interrupted_start_stops_what_started_and_says_so(tmp_path: Path) -> None:
    before = children()
    interrupt = Part("interrupt", [sys.executable, "-c", "import time; time.sleep(60)"], "http://127.0.0.1:9/", 30, "")
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    with (
        pytest.raises(StartUpFailed, match="interrupted during start-up: what had started is stopped"),
        running([http_part("first"), interrupt], tmp_path, grace_s=2.0),
    ):
        pass
    timer.join()
    assert children() <= before


def test_a_pid_file_naming_another_process_with_that_pid_is_stale(tmp_path: Path) -> None:
    """After a reboot or a kill -9 the pid may belong to another process: its start time tells."""
    (tmp_path / PID_FILE).write_text(f"{os.getpid()} {psutil.Process().create_time() - 3600}\n")
    assert read_pid(tmp_path / PID_FILE) is None
    assert down(tmp_path) is None


def test_a_stop_signal_inside_a_held_section_is_raised_at_its_end() -> None:
    """Starting a process and recording it is held: a Ctrl-C in between would leave the process unrecorded."""
    interrupts = Interrupts()
    previous = signal.signal(signal.SIGINT, interrupts.handle)
    steps = []
    try:
        with pytest.raises(KeyboardInterrupt), interrupts.held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)  # the handler has run by now
            steps.append("section finished")
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            steps.append("not held: never reached")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert steps == ["section finished"]
