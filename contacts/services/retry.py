"""Running a write again when a concurrent one got in its way (PostgreSQL deadlock victims)."""

import random
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import OperationalError, transaction

T = TypeVar("T")

# SQLSTATEs of a transaction PostgreSQL aborted to break a deadlock or a serialization conflict:
# running it again is the documented remedy.
RETRYABLE_SQLSTATES = {"40P01", "40001"}
# Seconds a deadlock victim waits before running again. The transaction it deadlocked with
# was waiting for one of its rows; run again at once, the victim may lock that row anew
# before the other wakes up to take it, and deadlock with it again (seen on PostgreSQL 15:
# a segment refresh waiting at commit for a merged contact lost it to each retry of the
# merge). A moment lets the other finish first; the retry then merely waits for it.
DEADLOCK_PAUSE = 0.05


def is_deadlock_victim(exc: BaseException) -> bool:
    """Whether PostgreSQL aborted the transaction to break a deadlock or a serialization
    conflict (psycopg's DeadlockDetected / SerializationFailure under Django's
    OperationalError)."""
    if not isinstance(exc, OperationalError):
        return False
    return getattr(exc.__cause__, "sqlstate", None) in RETRYABLE_SQLSTATES


def atomic_attempts(
    attempt: Callable[[bool], T],
    *,
    attempts: int,
    retry_if: Callable[[Exception], bool],
    pause: float = 0.0,
) -> T:
    """Run `attempt(last)` in its own atomic block, again after each failure `retry_if`
    accepts, at most `attempts` times; the last attempt's failure reaches the caller.

    `last` tells the attempt that no other follows (it may then settle for what it finds).
    Each attempt's queries are new statements: under READ COMMITTED (and SQLite's serialised
    IMMEDIATE transactions) an attempt sees what the transactions it raced have committed.
    `pause`: seconds (about; jittered, growing with each failure) to wait before the next.
    """
    for number in range(attempts):
        last = number == attempts - 1
        try:
            with transaction.atomic():
                return attempt(last)
        except Exception as exc:
            if last or not retry_if(exc):
                raise
        if pause:
            time.sleep(pause * (number + 1) * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")


def atomic_retrying_deadlocks(
    call: Callable[[], T], *, attempts: int, exhausted: Callable[[], Exception]
) -> T:
    """Run `call` in a transaction, again when PostgreSQL aborts it as a deadlock victim;
    after `attempts` of them, raise `exhausted()` (a DomainError the caller can show).

    Inside a caller's transaction it runs once, in a savepoint, and a deadlock reaches the
    caller: the rows the caller locked before stay locked after a savepoint rolls back, so only
    its whole transaction can be run again, by whoever owns it (identify does).
    """
    if transaction.get_connection().in_atomic_block:
        with transaction.atomic():
            return call()
    try:
        return atomic_attempts(
            lambda _last: call(),
            attempts=attempts,
            retry_if=is_deadlock_victim,
            pause=DEADLOCK_PAUSE,
        )
    except OperationalError as exc:
        if is_deadlock_victim(exc):
            raise exhausted() from exc
        raise
