"""Helpers for the tests that race real transactions on PostgreSQL (identify, merge, update)."""

import threading
import time

import pytest
from django.conf import settings
from django.db import ProgrammingError, connection, connections, transaction

# The marks of a module whose tests run real concurrent transactions: PostgreSQL only (SQLite
# runs one writing transaction at a time), each test committing for real.
CONCURRENT_TRANSACTIONS = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        "postgresql" not in settings.DATABASES["default"]["ENGINE"],
        reason="concurrent transactions: PostgreSQL",
    ),
]


def deadlocks() -> int:
    """Deadlocks PostgreSQL has broken in this database so far."""
    with connection.cursor() as cursor:
        # Statistics are a snapshot kept for the transaction unless cleared.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        return cursor.fetchone()[0]


def deadlocks_since(before: int, *, wait_for: int = 1) -> int:
    """The deadlocks counted since `before`, once `wait_for` are or a second has passed: a
    backend reports them when its connection closes, a moment after its thread is done."""
    deadline = time.monotonic() + 1
    while (count := deadlocks() - before) < wait_for and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def try_set(cursor, statement: str) -> None:
    """Widen the deadlock timings where allowed. deadlock_timeout is a superuser setting: a CI
    role without that right keeps the default (1 s), which gives the same order (the side
    that waits first is checked first and is the victim), with less room on a busy machine."""
    try:
        with transaction.atomic():
            cursor.execute(statement)
    except ProgrammingError:
        pass


def wait_until_another_backend_waits(cursor, *, timeout: float = 10) -> bool:
    """Return True once another backend of this database waits for a lock (False on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # The activity view is a snapshot kept for the transaction unless cleared.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        if cursor.fetchone()[0]:
            return True
        time.sleep(0.05)
    return False


def in_threads(targets: list) -> tuple[list, list]:
    """Run each target in its own thread (its own connection); return (results, errors)."""
    results: list = [None] * len(targets)
    errors: list = []

    def run(n: int) -> None:
        try:
            results[n] = targets[n]()
        except Exception as exc:  # reported by the test, not swallowed
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(targets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return results, errors
