"""runall restarts a worker that dies, with a growing delay, and leaves the web server running.

These drive the supervisor with small Python children instead of a real worker: starting
Django three times over would take the test past half a minute.
"""

import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from core.management.commands.runall import Child, Command

SLEEPER = "import time; time.sleep(60)"


def flaky_worker(starts: Path, *, failures: int) -> str:
    """A child that exits with code 3 on its first `failures` starts and then stays up."""
    return (
        "import pathlib, sys, time\n"
        f"starts = pathlib.Path({str(starts)!r})\n"
        "n = len(starts.read_text()) + 1 if starts.exists() else 1\n"
        "starts.write_text('x' * n)\n"
        "print(f'worker start {n}', flush=True)\n"
        f"if n <= {failures}:\n"
        "    sys.exit(3)\n"
        "time.sleep(60)\n"
    )


def wait_until(condition, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def started(starts: Path) -> int:
    return len(starts.read_text()) if starts.exists() else 0


def run_in_thread(command: Command, children: list[Child]) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run():
        result["failed"] = command.supervise(children, stop_timeout=5)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_a_dying_worker_is_restarted_with_backoff_and_web_stays_up(tmp_path, capsys):
    starts = tmp_path / "starts"
    web = Child("web", [sys.executable, "-c", SLEEPER])
    worker = Child("worker", [sys.executable, "-c", flaky_worker(starts, failures=2)], restart=True)
    command = Command()
    command.restart_delays = (0.1, 0.4)
    command.stable_seconds = 1.0
    thread, result = run_in_thread(command, [web, worker])
    try:
        wait_until(lambda: started(starts) == 3, timeout=10, what="the third worker start")
        web_pid = web.process.pid
        third = worker.process
        # Up longer than stable_seconds: a crash now is not part of the crash loop.
        time.sleep(1.2)
        assert third.poll() is None
        os.killpg(third.pid, signal.SIGKILL)
        wait_until(lambda: started(starts) == 4, timeout=10, what="the restart after the kill")
        assert web.process.pid == web_pid and web.process.poll() is None
        assert worker.process.poll() is None
    finally:
        command.stop_requested.set()
        thread.join(timeout=15)

    assert not thread.is_alive()
    assert result["failed"] is None
    assert web.process.returncode is not None and worker.process.returncode is not None
    out = capsys.readouterr().out
    delays = re.findall(
        r"worker (?:exited with code 3|was killed by SIGKILL); restarting it in ([\d.]+) s", out
    )
    assert delays == ["0.1", "0.4", "0.1"], out
    assert "worker was killed by SIGKILL" in out
    assert out.count("started web") == 1
    assert out.count("started worker") == 4
    for n in range(1, 5):
        assert f"worker start {n}" in out


def test_a_dying_web_server_still_stops_everything(tmp_path, capsys):
    web = Child("web", [sys.executable, "-c", "import sys; sys.exit(4)"])
    worker = Child("worker", [sys.executable, "-c", SLEEPER], restart=True)
    command = Command()
    thread, result = run_in_thread(command, [web, worker])
    thread.join(timeout=15)

    assert not thread.is_alive()
    assert result["failed"] is web
    assert web.process.returncode == 4
    assert worker.process.returncode is not None
    assert "restarting" not in capsys.readouterr().out
