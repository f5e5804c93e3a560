import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection

BASE_DIR = Path(settings.BASE_DIR)


def database_url_for_test_db() -> str:
    """The URL of the database this test session uses, for processes started by the test."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(s['NAME']).resolve()}"
    user = quote(s.get("USER") or "")
    password = quote(s.get("PASSWORD") or "")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    return f"postgres://{auth}{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"


class Processes:
    """Starts manage.py/celery processes against the test database and stops them all."""

    def __init__(self, tmp_path: Path, extra_env: dict[str, str]):
        self.tmp_path = tmp_path
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": database_url_for_test_db(),
            "DATA_DIR": str(tmp_path / "data"),
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL
            if not settings.CELERY_BROKER_URL.startswith("filesystem")
            else "filesystem://",
            "PYTHONUNBUFFERED": "1",
            **extra_env,
        }
        self.children: list[tuple[str, subprocess.Popen, Path]] = []

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, *args],
            cwd=BASE_DIR,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def start(self, name: str, *args: str) -> None:
        log = self.tmp_path / f"{name}.log"
        handle = log.open("w")
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=BASE_DIR,
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.children.append((name, proc, log))

    def logs(self) -> str:
        return "\n".join(f"----- {n} -----\n{log.read_text()}" for n, _, log in self.children)

    def stop(self) -> None:
        for _, proc, _ in self.children:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 15
        for _, proc, _ in self.children:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def processes(tmp_path):
    procs = Processes(tmp_path, {"SCRM_TICK_SECONDS": "1"})
    yield procs
    procs.stop()
