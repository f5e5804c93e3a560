"""The embedded filesystem broker delivers every message exactly once under concurrent use.

kombu's own filesystem transport let a consumer claim a message file that a producer had created
but not yet written, and crashed the worker with ``JSONDecodeError`` (kombu#1551).
"""

import contextlib
import multiprocessing
import os
import queue
import threading
import time
from pathlib import Path

import kombu
import pytest
from kombu.transport.filesystem import LOCK_EX, lock, unlock

import core.broker

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


def broker_options(root: Path) -> dict:
    for sub in ("queue", "processed", "control"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(root / "queue"),
        "data_folder_out": str(root / "queue"),
        "processed_folder": str(root / "processed"),
        "control_folder": str(root / "control"),
        "store_processed": False,
        # kombu sleeps this long whenever a poll finds nothing; 1 s by default.
        "polling_interval": 0.01,
    }


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
