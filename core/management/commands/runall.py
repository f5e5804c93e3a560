import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.core.management.color import supports_color

COLOURS = {"web": "\033[36m", "worker": "\033[33m", "beat": "\033[35m", "runall": "\033[32m"}
RESET = "\033[0m"
DEMO_LOGIN = ("demo", "demo12345")
# The role demo users seed_demo creates (journeys.demo.services, which core may not import).
DEMO_ROLE_LOGINS = (("store staff", "store", "store12345"), ("analyst", "analyst", "analyst12345"))
POLL_SECONDS = 0.2
# Waits before restarting a child that died, by how many times in a row it has died: quick
# enough that a crash costs the demo a few seconds, capped so a child that cannot start at all
# is retried twice a minute instead of in a busy loop.
RESTART_DELAYS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
# A child that ran this long before dying was not crash-looping: its backoff starts over.
STABLE_SECONDS = 60.0


@dataclass
class Child:
    name: str
    argv: list[str]
    # Worker and beat come back by themselves; the web server does not: when it dies (its port
    # is taken, say) there is no demo left to keep, and restarting would only fail again.
    restart: bool = False
    process: subprocess.Popen | None = None
    reader: threading.Thread | None = field(default=None, repr=False)
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None


class Command(BaseCommand):
    help = (
        "Run the web server, a Celery worker and Celery beat together for local use; "
        "Ctrl-C stops all three."
    )
    requires_system_checks = []
    restart_delays = RESTART_DELAYS
    stable_seconds = STABLE_SECONDS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.colour = supports_color()
        self.write_lock = threading.Lock()
        self.stop_requested = threading.Event()
        self.force_kill = threading.Event()

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--gunicorn", action="store_true", help="Serve with gunicorn instead of runserver."
        )
        parser.add_argument(
            "--stop-timeout",
            type=float,
            default=10.0,
            help="Seconds to wait after SIGTERM before killing what is left.",
        )

    def handle(self, *args, host: str, port: int, gunicorn: bool, stop_timeout: float, **options):
        children = self.build_children(host=host, port=port, gunicorn=gunicorn)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self.on_signal)

        url_host = f"[{host}]" if ":" in host else host
        self.say(f"SCRM is starting at http://{url_host}:{port}/")
        self.say(f"Log in as {DEMO_LOGIN[0]} / {DEMO_LOGIN[1]} (created by `manage.py seed_demo`)")
        for role, username, password in DEMO_ROLE_LOGINS:
            self.say(f"  or as {role}: {username} / {password}")
        self.say("Press Ctrl-C to stop web, worker and beat.")

        failed = self.supervise(children, stop_timeout=stop_timeout)
        if failed is not None:
            raise CommandError(
                f"{failed.name} exited with code {failed.process.returncode}; stopped the others."
            )
        self.say("All processes stopped.")

    def supervise(self, children: list[Child], *, stop_timeout: float) -> Child | None:
        """Run `children` until a stop is requested; return the one whose death ended the run."""
        failed: Child | None = None
        try:
            for child in children:
                self.start(child)
            while not self.stop_requested.wait(POLL_SECONDS):
                failed = self.check(children)
                if failed:
                    break
        finally:
            self.stop_all(children, timeout=stop_timeout)
        return failed

    def check(self, children: list[Child]) -> Child | None:
        """Restart children that are due; return a child that died and may not be restarted."""
        now = time.monotonic()
        for child in children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restart_at = None
                    self.start(child)
                continue
            code = child.process.poll()
            if code is None:
                continue
            if not child.restart:
                return child
            self.schedule_restart(child, code=code, now=now)
        return None

    def schedule_restart(self, child: Child, *, code: int, now: float) -> None:
        # A prefork worker's pool processes may outlive a main process that was killed.
        self.signal_group(child, signal.SIGKILL)
        child.reader.join(timeout=2)
        if now - child.started_at >= self.stable_seconds:
            child.failures = 0
        delay = self.restart_delays[min(child.failures, len(self.restart_delays) - 1)]
        child.failures += 1
        child.restart_at = now + delay
        how = (
            f"was killed by {signal.Signals(-code).name}"
            if code < 0
            else f"exited with code {code}"
        )
        self.say(
            f"{child.name} {how}; restarting it in {delay:g} s "
            f"({child.failures} failure(s) in a row)"
        )

    def build_children(self, *, host: str, port: int, gunicorn: bool) -> list[Child]:
        python = sys.executable
        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if gunicorn:
            web = [python, "-m", "gunicorn", "config.wsgi", "--bind", bind, "--workers", "2"]
            web += ["--access-logfile", "-"]
        else:
            web = [python, "manage.py", "runserver", bind, "--noreload"]
        engine = settings.DATABASES["default"]["ENGINE"]
        # On SQLite the worker uses threads: every write takes the one database-wide lock anyway,
        # so extra processes add only lock contention and memory, and no process is forked with
        # an open SQLite handle (SQLite forbids using a connection across fork). PostgreSQL gets
        # the prefork pool, which runs CPU-bound tasks in parallel and survives a crashed task.
        pool = "threads" if engine.endswith("sqlite3") else "prefork"
        worker = [python, "-m", "celery", "-A", "config", "worker"]
        worker += [
            "-Q",
            "realtime,bulk,default",
            "--concurrency",
            "2",
            "--pool",
            pool,
            "-l",
            "info",
        ]
        beat = [python, "-m", "celery", "-A", "config", "beat", "-l", "info"]
        return [
            Child("web", web),
            Child("worker", worker, restart=True),
            Child("beat", beat, restart=True),
        ]

    def start(self, child: Child) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Each child leads its own process group: Ctrl-C reaches only this supervisor, which then
        # stops every child with all of its own subprocesses (prefork or gunicorn workers).
        child.process = subprocess.Popen(
            child.argv,
            cwd=settings.BASE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        child.started_at = time.monotonic()
        child.reader = threading.Thread(
            target=self.pump, args=(child.name, child.process.stdout), daemon=True
        )
        child.reader.start()
        self.say(f"started {child.name} (pid {child.process.pid}): {' '.join(child.argv[1:])}")

    def pump(self, name: str, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.emit(name, raw.decode("utf-8", errors="replace").rstrip("\r\n"))
        stream.close()

    def emit(self, name: str, line: str) -> None:
        label = f"{name:<6} |"
        if self.colour:
            label = f"{COLOURS.get(name, '')}{label}{RESET}"
        with self.write_lock:
            sys.stdout.write(f"{label} {line}\n")
            sys.stdout.flush()

    def say(self, message: str) -> None:
        self.emit("runall", message)

    def on_signal(self, signum: int, frame) -> None:
        if self.stop_requested.is_set():
            # A second Ctrl-C means "now": skip the grace period.
            self.force_kill.set()
        self.stop_requested.set()

    def stop_all(self, children: list[Child], *, timeout: float) -> None:
        running = [c for c in children if c.process is not None]
        for child in running:
            child.restart_at = None
        self.say("stopping " + ", ".join(c.name for c in running if c.process.poll() is None))
        for child in running:
            self.signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.force_kill.is_set():
            if all(c.process.poll() is not None for c in running):
                break
            time.sleep(POLL_SECONDS)
        for child in running:
            if child.process.poll() is None:
                self.say(f"{child.name} did not stop in time; killing it")
            # Also sweeps grandchildren left behind by a child that has already exited.
            self.signal_group(child, signal.SIGKILL)
            child.process.wait()
        for child in running:
            child.reader.join(timeout=2)

    @staticmethod
    def signal_group(child: Child, signum: int) -> None:
        # The group is gone once every process in it has exited.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signum)
