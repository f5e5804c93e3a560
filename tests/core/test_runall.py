"""`manage.py runall` starts web, worker and beat, and Ctrl-C leaves no process behind."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


START_TIMEOUT = 120


def wait_for_healthz(url: str, *, process: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "runall exited before the web server answered"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return json.load(response)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer 200 within {timeout} s")


def wait_for_log(path: Path, pattern: str, *, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, path.read_text(errors="replace"), re.MULTILINE):
            return
        assert process.poll() is None, "runall exited early:\n" + path.read_text(errors="replace")
        time.sleep(0.3)
    raise AssertionError(f"no line matching {pattern!r} within {timeout} s")


def processes_using(data_dir: Path) -> list[int]:
    """PIDs of live processes whose environment names this DATA_DIR: every child and grandchild."""
    marker = f"DATA_DIR={data_dir}".encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "environ").read_bytes().find(marker) >= 0 and not _is_zombie(entry):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _is_zombie(proc_dir: Path) -> bool:
    status = (proc_dir / "status").read_text()
    return bool(re.search(r"^State:\s+Z", status, re.MULTILINE))


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_runall_serves_healthz_and_stops_every_child_on_sigint(tmp_path):
    data_dir = tmp_path / "data"
    # The embedded default in its own DATA_DIR, set explicitly so that neither the environment
    # (CI's PostgreSQL and Redis run) nor a developer's .env points the children at shared servers.
    env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "DATABASE_URL": f"sqlite:///{data_dir / 'scrm.sqlite3'}",
        "CELERY_BROKER_URL": "filesystem://",
        "CACHE_URL": f"filecache://{data_dir / 'cache'}",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "true",
        "PYTHONUNBUFFERED": "1",
    }
    manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
    # One process for both commands saves a Django start-up (seconds on a busy CI machine).
    prepare = (
        "from django.core.management import call_command; "
        "call_command('migrate', interactive=False, verbosity=0); "
        "call_command('setup_periodic_tasks', verbosity=0)"
    )
    subprocess.run(
        [*manage, "shell", "--no-imports", "-c", prepare],
        cwd=settings.BASE_DIR,
        env=env,
        check=True,
        timeout=120,
        stdout=subprocess.DEVNULL,
    )
    port = free_port()
    log_path = tmp_path / "runall.log"
    with log_path.open("wb") as log:
        runall = subprocess.Popen(
            [*manage, "runall", "--port", str(port)],
            cwd=settings.BASE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            # Three Django processes start on two cores that CI shares with the other suite:
            # that has taken over 30 s. The waits end as soon as the answer comes.
            health = wait_for_healthz(
                f"http://127.0.0.1:{port}/healthz", process=runall, timeout=START_TIMEOUT
            )
            assert health["checks"]["database"]["status"] == "ok"
            assert health["checks"]["broker"]["status"] == "ok"
            # Beat sends its first ticks at start; the worker must take one off the broker.
            wait_for_log(
                log_path,
                r"^\S*worker\s*\|.*Task journeys\.advance_due\[.*\] succeeded",
                process=runall,
                timeout=START_TIMEOUT,
            )
            assert len(processes_using(data_dir)) >= 4  # the supervisor and its three children

            runall.send_signal(signal.SIGINT)
            assert runall.wait(timeout=60) == 0
        finally:
            if runall.poll() is None:
                runall.kill()
                runall.wait()

    output = log_path.read_text(errors="replace")
    assert f"http://127.0.0.1:{port}/" in output
    assert "demo / demo12345" in output
    for name in ("web", "worker", "beat"):
        assert re.search(rf"^(\x1b\[\d+m)?{name}\s*\|", output, re.MULTILINE), output
    assert "All processes stopped." in output
    assert processes_using(data_dir) == [], output
