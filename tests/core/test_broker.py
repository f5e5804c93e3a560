"""The embedded filesystem broker delivers every message exactly once under concurrent use, and
again, once, when the consumer that held it unacknowledged is killed.

kombu's own filesystem transport let a consumer claim a message file that a producer had created
but not yet written, and crashed the worker with ``JSONDecodeError`` (kombu#1551); it also
deleted each message as it handed it out, so a worker killed mid-task lost it.
"""

import contextlib
import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import kombu
import pytest
from celery import Celery
from kombu.transport.filesystem import LOCK_EX, lock, unlock

import core.broker
from tests.core.broker_spool import broker_options

PUBLISHERS = 4
CONSUMERS = 2
PER_PUBLISHER = 300
EXCHANGE = kombu.Exchange("default", "direct")
QUEUE = kombu.Queue("default", EXCHANGE, routing_key="default")


@pytest.fixture(autouse=True)
def _fresh_broker_state():
    # kombu keeps the bindings it has made in a process-wide state and skips writing one it
    # remembers; each test has a new spool, as each process of the product has its own memory.
    core.broker.Transport.global_state.clear()
    yield
    core.broker.Transport.global_state.clear()


def publish(root: Path, publisher: int, start: multiprocessing.Barrier) -> None:
    with kombu.Connection("filesystem://", transport_options=broker_options(root)) as conn:
        producer = conn.Producer(serializer="json")
        start.wait(timeout=10)
        for i in range(PER_PUBLISHER):
            # Declaring on every publish binds the queue in each process at the same moment,
            # as web, worker and beat do on a fresh DATA_DIR.
            producer.publish(
                {"publisher": publisher, "i": i},
                exchange=EXCHANGE,
                routing_key="default",
                declare=[QUEUE],
            )


def consume(
    root: Path,
    start: multiprocessing.Barrier,
    stop: multiprocessing.Event,
    received: multiprocessing.Queue,
) -> None:
    with kombu.Connection("filesystem://", transport_options=broker_options(root)) as conn:

        def on_message(body, message):
            received.put((body["publisher"], body["i"]))
            message.ack()

        with conn.Consumer([QUEUE], callbacks=[on_message], accept=["json"]):
            start.wait(timeout=10)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.1)


def test_filesystem_scheme_resolves_to_our_transport(tmp_path):
    with kombu.Connection("filesystem://", transport_options=broker_options(tmp_path)) as conn:
        assert isinstance(conn.transport, core.broker.Transport)


def test_concurrent_publishers_and_consumers_deliver_every_message_exactly_once(tmp_path):
    root = tmp_path / "broker"
    # fork: the children need only kombu and the transport alias config/celery.py has set.
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(PUBLISHERS + CONSUMERS)
    stop = ctx.Event()
    received = ctx.Queue()
    consumers = [
        ctx.Process(target=consume, args=(root, start, stop, received)) for _ in range(CONSUMERS)
    ]
    publishers = [ctx.Process(target=publish, args=(root, n, start)) for n in range(PUBLISHERS)]
    expected = sorted((p, i) for p in range(PUBLISHERS) for i in range(PER_PUBLISHER))
    got = []
    try:
        for process in consumers + publishers:
            process.start()
        deadline = time.monotonic() + 60
        while len(got) < len(expected) and time.monotonic() < deadline:
            assert all(c.exitcode is None for c in consumers), "a consumer crashed"
            try:
                got.append(received.get(timeout=0.5))
            except queue.Empty:
                continue
        # Anything delivered twice would arrive shortly after the last expected message.
        time.sleep(0.3)
        while not received.empty():
            got.append(received.get())
    finally:
        stop.set()
        for process in publishers + consumers:
            process.join(timeout=10)
            if process.exitcode is None:
                process.kill()
                process.join()

    assert [p.exitcode for p in publishers] == [0] * PUBLISHERS
    assert [c.exitcode for c in consumers] == [0] * CONSUMERS
    assert sorted(got) == expected
    assert os.listdir(root / "queue") == []
    assert not (root / "corrupt").exists()


def oldest_message_file(queue_dir: Path) -> Path:
    # Sorts before every name the transport writes, so it is the next one a consumer claims.
    return queue_dir / f"{'0' * 20}_00000000-0000-0000-0000-000000000000.default.msg"


@pytest.mark.parametrize("locked", [True, False], ids=["locked", "not-yet-locked"])
def test_a_message_still_being_written_by_kombus_own_writer_is_read_once_complete(tmp_path, locked):
    options = broker_options(tmp_path)
    queue_dir = tmp_path / "queue"
    with kombu.Connection("filesystem://", transport_options=options) as conn:
        sender = conn.SimpleQueue(QUEUE)
        sender.put({"n": 1}, serializer="json")
        (whole,) = os.listdir(queue_dir)
        body = (queue_dir / whole).read_bytes()
        (queue_dir / whole).unlink()

        # kombu's _put creates the file under its final name, then locks it, then writes.
        writer = oldest_message_file(queue_dir).open("wb", buffering=0)
        if locked:
            lock(writer, LOCK_EX)

        def finish_writing():
            time.sleep(0.3)
            writer.write(body)
            if locked:
                unlock(writer)
            writer.close()

        thread = threading.Thread(target=finish_writing)
        thread.start()
        message = sender.get(timeout=5)
        thread.join()
        assert message.payload == {"n": 1}
        message.ack()
        assert os.listdir(queue_dir) == []


def test_an_undecodable_message_is_set_aside_and_the_next_one_delivered(tmp_path, caplog):
    options = broker_options(tmp_path)
    queue_dir = tmp_path / "queue"
    corrupt = oldest_message_file(queue_dir)
    corrupt.write_bytes(b'{"body": "trunc')
    stale = time.time() - 60
    os.utime(corrupt, (stale, stale))
    with kombu.Connection("filesystem://", transport_options=options) as conn:
        queue = conn.SimpleQueue(QUEUE)
        queue.put({"n": 2}, serializer="json")
        message = queue.get(timeout=5)
        assert message.payload == {"n": 2}
        message.ack()

    assert os.listdir(tmp_path / "corrupt") == [corrupt.name]
    assert (tmp_path / "corrupt" / corrupt.name).read_bytes() == b'{"body": "trunc'
    assert os.listdir(queue_dir) == []
    assert "undecodable broker message" in caplog.text


def test_a_message_that_cannot_be_read_goes_back_to_the_queue_not_stays_claimed(tmp_path):
    # A directory where a message file should be: claiming it (a rename) works, opening it
    # fails, as a read under "too many open files" would. Left claimed by this live consumer,
    # no recovery would ever hand it out again.
    options = broker_options(tmp_path)
    queue_dir = tmp_path / "queue"
    unreadable = oldest_message_file(queue_dir)
    unreadable.mkdir()
    with kombu.Connection("filesystem://", transport_options=options) as conn:
        channel = conn.default_channel
        with pytest.raises(kombu.exceptions.ChannelError):
            channel._get("default")

    assert unreadable.is_dir()
    assert [name for name in os.listdir(queue_dir) if name.endswith(".claimed")] == []


@pytest.mark.parametrize("existing", [b"", None])
def test_binding_a_queue_fills_a_new_or_just_created_exchange_table(tmp_path, existing):
    options = broker_options(tmp_path)
    table = tmp_path / "control" / "default.exchange"
    if existing is not None:
        # Another process has created the table and not yet written it.
        table.write_bytes(existing)
    with kombu.Connection("filesystem://", transport_options=options) as conn:
        channel = conn.default_channel
        assert channel.get_table("default") == []
        QUEUE(channel).declare()
        # As another process would: it does not share this one's memory of the binding.
        core.broker.Transport.global_state.clear()
        QUEUE(channel).declare()
        assert channel.get_table("default") == [("default", "", "default")]


# --- Redelivery after a consumer dies ---------------------------------------------------------

# Short, so that a consumer that is already running notices a dead one within the test.
RECOVERY_INTERVAL = 0.1


def publish_numbers(root: Path, *numbers: int) -> None:
    with kombu.Connection("filesystem://", transport_options=broker_options(root)) as conn:
        producer = conn.Producer(serializer="json")
        for n in numbers:
            producer.publish({"n": n}, exchange=EXCHANGE, routing_key="default", declare=[QUEUE])


def drain_forever(conn: kombu.Connection) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.1)


def report(path: Path, kind: str, n: int) -> None:
    # One append per line, not a multiprocessing.Queue: a process killed while holding the
    # queue's lock would leave it locked for the next consumer.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{kind} {n}\n".encode())
    finally:
        os.close(fd)


def ack_some_then_hang(root: Path, acks: int, reports: Path) -> None:
    """Acknowledge the first `acks` messages, then take one more and never acknowledge it."""
    options = broker_options(root, claim_recovery_interval=RECOVERY_INTERVAL)
    with kombu.Connection("filesystem://", transport_options=options) as conn:
        seen = []

        def on_message(body, message):
            seen.append(body["n"])
            if len(seen) <= acks:
                message.ack()
                report(reports, "acked", body["n"])
            else:
                # A task running with acks_late when the worker is killed.
                report(reports, "holding", body["n"])
                time.sleep(600)

        with conn.Consumer([QUEUE], callbacks=[on_message], accept=["json"], prefetch_count=1):
            drain_forever(conn)


def ack_everything(root: Path, reports: Path) -> None:
    options = broker_options(root, claim_recovery_interval=RECOVERY_INTERVAL)
    with kombu.Connection("filesystem://", transport_options=options) as conn:

        def on_message(body, message):
            message.ack()
            report(reports, "acked", body["n"])

        with conn.Consumer([QUEUE], callbacks=[on_message], accept=["json"]):
            drain_forever(conn)


class Consumers:
    """Consumer processes forked from the test, all killed at the end, and what they report."""

    def __init__(self, root: Path):
        self.root = root
        self.ctx = multiprocessing.get_context("fork")
        self.reports = root / "reports"
        self.read = 0
        self.processes: list[multiprocessing.Process] = []

    def start(self, target, *args) -> multiprocessing.Process:
        process = self.ctx.Process(target=target, args=(self.root, *args, self.reports))
        process.start()
        self.processes.append(process)
        return process

    def _lines(self) -> list[str]:
        return self.reports.read_text().splitlines() if self.reports.exists() else []

    def next(self, timeout: float = 10) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self._lines()
            if len(lines) > self.read:
                kind, n = lines[self.read].split()
                self.read += 1
                return kind, int(n)
            time.sleep(0.02)
        raise AssertionError(f"nothing delivered within {timeout} s")

    def nothing_more(self, seconds: float) -> bool:
        time.sleep(seconds)
        extra = self._lines()[self.read :]
        assert extra == [], f"unexpected deliveries {extra}"
        return True

    def kill_all(self) -> None:
        for process in self.processes:
            if process.exitcode is None:
                process.kill()
            process.join()


@pytest.fixture
def consumers(tmp_path):
    group = Consumers(tmp_path)
    yield group
    group.kill_all()


def claims(queue_dir: Path) -> list[str]:
    return sorted(name for name in os.listdir(queue_dir) if name.endswith(".claimed"))


def test_a_message_held_by_a_killed_consumer_is_delivered_once_more_and_acked_ones_never(
    tmp_path, consumers
):
    queue_dir = tmp_path / "queue"
    publish_numbers(tmp_path, 1, 2, 3)
    first = consumers.start(ack_some_then_hang, 1)
    assert consumers.next() == ("acked", 1)
    assert consumers.next() == ("holding", 2)

    os.kill(first.pid, signal.SIGKILL)
    first.join()
    # The claim is named after the consumer that made it and outlives it.
    (claim,) = claims(queue_dir)
    assert f".msg.{first.pid}-" in claim

    consumers.start(ack_everything)
    assert sorted([consumers.next(), consumers.next()]) == [("acked", 2), ("acked", 3)]
    # Several recovery passes later: no second copy of 2, and 1 never comes back.
    assert consumers.nothing_more(1.0)
    assert os.listdir(queue_dir) == []
    # The dead consumer's registration is cleared up with its claims.
    assert not any(name.startswith(f"{first.pid}-") for name in os.listdir(tmp_path / "consumers"))


def test_a_running_consumer_leaves_a_live_ones_claim_alone_and_takes_it_once_the_owner_dies(
    tmp_path, consumers
):
    queue_dir = tmp_path / "queue"
    publish_numbers(tmp_path, 1)
    holder = consumers.start(ack_some_then_hang, 0)
    assert consumers.next() == ("holding", 1)
    # Two live workers: ten recovery passes of the second leave the first one's message alone.
    consumers.start(ack_everything)
    deadline = time.monotonic() + 10
    while len(list((tmp_path / "consumers").glob("*.lock"))) < 2:
        assert time.monotonic() < deadline, "the second consumer did not start"
        time.sleep(0.02)
    assert consumers.nothing_more(1.0)
    assert len(claims(queue_dir)) == 1

    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    assert consumers.next() == ("acked", 1)
    assert consumers.nothing_more(0.5)
    assert os.listdir(queue_dir) == []


def test_a_claim_is_recovered_by_its_owners_lock_not_its_pid(tmp_path):
    # The pid in a claim's name may belong to another live process by now (here: this one);
    # only the owner's lock decides, and a file nobody holds locked is a dead owner's.
    options = broker_options(tmp_path)
    queue_dir = tmp_path / "queue"
    publish_numbers(tmp_path, 7)
    (name,) = os.listdir(queue_dir)
    token = f"{os.getpid()}-0123456789abcdef"
    (queue_dir / name).rename(queue_dir / core.broker.claim_name(name, token))
    (tmp_path / "consumers").mkdir()
    (tmp_path / "consumers" / f"{token}.lock").write_text(f"pid {os.getpid()}\n")

    with kombu.Connection("filesystem://", transport_options=options) as conn:
        message = conn.SimpleQueue(QUEUE).get(timeout=5)
        assert message.payload == {"n": 7}
        message.ack()
    assert os.listdir(queue_dir) == []
    assert not (tmp_path / "consumers" / f"{token}.lock").exists()


def test_unacknowledged_messages_go_back_on_close_and_on_requeue_and_only_once(tmp_path):
    options = broker_options(tmp_path)
    queue_dir = tmp_path / "queue"
    publish_numbers(tmp_path, 1, 2, 3)
    with kombu.Connection("filesystem://", transport_options=options) as conn:
        simple = conn.SimpleQueue(QUEUE)
        one = simple.get(timeout=5)
        one.reject(requeue=True)  # Celery's reject_on_worker_lost
        again = simple.get(timeout=5)
        assert again.payload == {"n": 1}  # back in its place at the head of the queue
        again.reject()  # discarded, as a message Celery cannot decode
        two = simple.get(timeout=5)
        assert two.payload == {"n": 2}
        assert len(claims(queue_dir)) == 1
    # Closing the connection with 2 unacknowledged puts it back (a worker's warm shutdown).
    assert claims(queue_dir) == []
    assert len(os.listdir(queue_dir)) == 2

    with kombu.Connection("filesystem://", transport_options=options) as conn:
        simple = conn.SimpleQueue(QUEUE)
        got = []
        for _ in range(2):
            message = simple.get(timeout=5)
            got.append(message.payload["n"])
            message.ack()
        with pytest.raises(simple.Empty):
            simple.get(timeout=0.3)
    assert got == [2, 3]
    assert os.listdir(queue_dir) == []


def test_a_consumer_sweeps_stale_partial_files_and_keeps_fresh_ones(tmp_path, caplog):
    options = broker_options(tmp_path)
    queue_dir = tmp_path / "queue"
    consumers_dir = tmp_path / "consumers"
    consumers_dir.mkdir()
    stale = queue_dir / f".{'0' * 20}_dead-writer.default.msg.partial"
    fresh = queue_dir / f".{'0' * 20}_busy-writer.default.msg.partial"
    # A consumer killed while registering, and one registering right now.
    stale_new = consumers_dir / ".1-00000000deadbeef.new"
    fresh_new = consumers_dir / ".2-00000000cafebabe.new"
    for path in (stale, fresh):
        path.write_bytes(b'{"body": "half')
    for path in (stale_new, fresh_new):
        path.write_bytes(b"")
    old = time.time() - core.broker.STALE_PARTIAL_SECONDS - 60
    for path in (stale, stale_new):
        os.utime(path, (old, old))

    with kombu.Connection("filesystem://", transport_options=options) as conn:
        simple = conn.SimpleQueue(QUEUE)
        simple.put({"n": 1}, serializer="json")
        message = simple.get(timeout=5)
        assert message.payload == {"n": 1}
        message.ack()

    assert os.listdir(queue_dir) == [fresh.name]
    assert "partial broker message file(s) left by a dead writer" in caplog.text
    assert fresh_new.exists()
    assert not stale_new.exists()


def test_a_claim_left_by_the_previous_transport_version_is_requeued_once_it_is_old(tmp_path):
    # That version named a claim ".<message>.claimed" and held it only while reading the file.
    options = broker_options(tmp_path)
    queue_dir = tmp_path / "queue"
    publish_numbers(tmp_path, 1)
    (first,) = os.listdir(queue_dir)
    (queue_dir / first).rename(queue_dir / f".{first}.claimed")
    time.sleep(core.broker.UNOWNED_CLAIM_GRACE_SECONDS + 0.2)
    publish_numbers(tmp_path, 2)
    (second,) = (name for name in os.listdir(queue_dir) if not name.startswith("."))
    (queue_dir / second).rename(queue_dir / f".{second}.claimed")

    with kombu.Connection("filesystem://", transport_options=options) as conn:
        simple = conn.SimpleQueue(QUEUE)
        message = simple.get(timeout=5)
        assert message.payload == {"n": 1}
        message.ack()
        with pytest.raises(simple.Empty):
            simple.get(timeout=0.3)
    # Claimed a moment ago: possibly still being read by a consumer of that version.
    assert os.listdir(queue_dir) == [f".{second}.claimed"]


# --- A real Celery worker ---------------------------------------------------------------------


class Worker:
    def __init__(self, root: Path, name: str):
        self.log = root / f"{name}.log"
        env = {**os.environ, "BROKER_TEST_ROOT": str(root)}
        # Celery sets Django up when this is set; the test app does not need it.
        env.pop("DJANGO_SETTINGS_MODULE", None)
        # Celery's CELERY_BROKER_URL wins over the app's own broker: where the suite runs with
        # Redis as the product's broker, the worker would not be testing this transport.
        env.pop("CELERY_BROKER_URL", None)
        argv = [sys.executable, "-m", "celery", "-A", "tests.core.broker_worker_app", "worker"]
        argv += ["-n", f"{name}@%h", "-P", "threads", "-c", "1", "-l", "info"]
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=Path(__file__).resolve().parents[2],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, condition, *, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            assert self.process.poll() is None, f"worker exited:\n{self.output()}"
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n{self.output()}")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.mark.e2e
def test_a_celery_worker_killed_mid_task_gets_an_acks_late_task_back_and_nothing_else(
    tmp_path, monkeypatch
):
    # The sender too: CELERY_BROKER_URL (Redis, in CI's PostgreSQL run) wins over its conf.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    events = tmp_path / "events"

    def lines() -> list[str]:
        return events.read_text().splitlines() if events.exists() else []

    # Not the worker's module: importing it here would make its app this process's current one.
    sender = Celery("brokertest-sender", set_as_current=False)
    sender.conf.broker_url = "filesystem://"
    sender.conf.broker_transport_options = broker_options(tmp_path)
    first = Worker(tmp_path, "first")
    second = None
    try:
        first.wait_for(lambda: "ready." in first.output(), what="the first worker")
        sender.send_task("brokertest.early", args=["early"])
        first.wait_for(lambda: any(x.startswith("ran early") for x in lines()), what="early")
        (tmp_path / "hold-late").touch()
        sender.send_task("brokertest.late", args=["late"])
        first.wait_for(lambda: any(x.startswith("start late") for x in lines()), what="late")

        first.kill()  # SIGKILL, mid-task
        (tmp_path / "hold-late").unlink()
        second = Worker(tmp_path, "second")
        second.wait_for(lambda: "done late" in lines(), what="the redelivered task")
        # Broadcasts (no acknowledgement) leave no claim behind either.
        assert sender.control.ping(destination=[f"second@{os.uname().nodename}"], timeout=5)
        time.sleep(0.5)
    finally:
        first.kill()
        if second is not None:
            second.stop()

    starts = [x for x in lines() if x.startswith("start late")]
    assert starts == [f"start late {first.process.pid}", f"start late {second.process.pid}"]
    assert lines().count("done late") == 1
    assert len([x for x in lines() if x.startswith("ran early")]) == 1
    assert claims(tmp_path / "queue") == []
    assert "Requeued 1 broker message(s)" in second.output()
